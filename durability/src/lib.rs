//! What makes a service's state durable, shared by the catalog and the replicas:
//! [`group_commit`] (one thread appends what is queued and fsyncs once per batch) into a
//! [`log_file`] (an append-only file whose space is written ahead, so an fsync writes data only),
//! [`files`] (the state directory's lock, atomic replacement of small files), [`window`] (the
//! bounded memory of recent request ids behind exactly-once), [`waiters`] (requests answered
//! only once what they depend on is on disk), and [`storage`] (what a service does when its
//! disk fails: acknowledge nothing, then restart from its log).

pub mod files;
pub mod group_commit;
pub mod log_file;
pub mod storage;
pub mod waiters;
pub mod window;
