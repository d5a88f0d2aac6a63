-- host-facts: one row per host with OS, kernel, uptime, load and its fullest disk.
local facts = require "parse"

return function(params, ctx)
	local results = ssh.script(params.targets, "facts.sh", {}, { timeout = params.timeout })
	local rows = json.array()
	local failed = 0
	for _, r in ipairs(results) do
		if r.ok then
			table.insert(rows, facts.row(r.host, r.stdout))
		else
			failed += 1
			table.insert(rows, { host = r.host, error = r.error or ("exit " .. tostring(r.exit_code) .. ": " .. r.stderr) })
		end
	end
	if failed > 0 then
		log.warn(string.format("%d of %d hosts did not answer", failed, #results))
	end
	return rows
end
