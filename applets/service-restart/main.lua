-- service-restart: canary first, then batches; each host is checked with `systemctl is-active`
-- after its restart. Under --dry-run it returns the plan: which command would run where.
return function(params, ctx)
	local unit = params.unit
	if not string.match(unit, "^[%w@][%w@%.:_%-]*$") then
		error(string.format("unit %q is not a systemd unit name (letters, digits, @ . : _ -)", unit))
	end
	local opts = { sudo = true, canary = 1, batch = params.batch, stop_after = params.stop_after, timeout = 120 }
	local restarted = ssh.run(params.targets, "systemctl restart " .. unit, opts)
	if ctx.dry_run then
		return restarted
	end
	-- Check the hosts where the restart went through.
	local done = {}
	for _, r in ipairs(restarted) do
		if r.ok then
			table.insert(done, r.host)
		end
	end
	local active = {}
	if #done > 0 then
		for _, r in ipairs(ssh.run(table.concat(done, ","), "systemctl is-active " .. unit, { sudo = true })) do
			active[r.host] = string.gsub(r.stdout, "%s+$", "")
		end
	end
	local rows = json.array()
	local ok, failed, skipped = 0, 0, 0
	for _, r in ipairs(restarted) do
		local state = active[r.host]
		local status
		if r.skipped then
			status, skipped = "skipped", skipped + 1
		elseif r.ok and state == "active" then
			status, ok = "restarted", ok + 1
		else
			status, failed = "failed", failed + 1
		end
		table.insert(rows, {
			host = r.host,
			status = status,
			state = state,
			exit_code = r.exit_code,
			error = r.error or (not r.ok and not r.skipped and string.gsub(r.stderr, "%s+$", "")) or nil,
			seconds = math.floor(r.duration * 100 + 0.5) / 100,
		})
	end
	log.info(string.format("%s: %d restarted, %d failed, %d skipped", unit, ok, failed, skipped))
	if failed > 0 then
		log.warn("some hosts failed; the rest were not touched after the failure limit")
	end
	return rows
end
