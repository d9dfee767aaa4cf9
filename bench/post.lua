-- wrk script: POST /orders alternating a sell and a buy of one GameStart share, so that the
-- stock never runs out however long the run.
local n = 0
request = function()
    n = n + 1
    local kind = (n % 2 == 0) and "buy" or "sell"
    local body = '{"name":"GameStart","quantity":1,"type":"' .. kind .. '"}'
    return wrk.format("POST", "/orders", {["Content-Type"] = "application/json"}, body)
end
