-- switch-backup: reads each device's running configuration (the profile's backup command) and
-- stores it in the cmdb as a new version when it changed. The result has one row per device;
-- changed devices carry the diff against their previous version.
return function(params)
	local results = netdev.backup(params.devices, { concurrency = params.concurrency })
	local rows = json.array()
	local changed, same, failed = 0, 0, 0
	for _, r in ipairs(results) do
		local row = {
			host = r.host,
			profile = r.profile,
			status = "failed",
			version = r.version,
			bytes = r.bytes,
			error = r.error,
			seconds = math.floor(r.duration * 100 + 0.5) / 100,
		}
		if r.ok and r.changed then
			changed += 1
			row.status = if r.version == 1 then "first backup" else "changed"
			if params.diff and r.version > 1 then
				row.diff = netdev.diff(r.host, r.version - 1, r.version)
			end
		elseif r.ok then
			same += 1
			row.status = "unchanged"
		else
			failed += 1
		end
		table.insert(rows, row)
	end
	log.info(string.format("%d changed, %d unchanged, %d failed", changed, same, failed))
	if failed > 0 then
		log.warn("some devices could not be backed up; see their error")
	end
	return rows
end
