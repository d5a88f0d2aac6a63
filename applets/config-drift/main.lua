-- config-drift: compares each host's file with the hash recorded when opslet published it.
-- drifted: someone edited it; missing: it is gone; unknown: opslet never published it there.
return function(params)
	local results = config.check(params.item, params.targets, { repair = params.repair })
	local rows = json.array()
	local drifted = 0
	for _, r in ipairs(results) do
		if r.status == "drifted" or r.status == "missing" then
			drifted += 1
		end
		table.insert(rows, {
			host = r.host,
			status = r.status or "error",
			version = r.version,
			repaired = r.repaired,
			expected_sha256 = r.after_sha256,
			actual_sha256 = r.before_sha256,
			error = r.error,
		})
	end
	if drifted > 0 and not params.repair then
		log.warn(string.format("%d host(s) drifted from %s; run again with repair=true to put the recorded version back", drifted, params.item))
	else
		log.info(string.format("%s: %d host(s) drifted", params.item, drifted))
	end
	return rows
end
