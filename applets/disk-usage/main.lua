-- disk-usage: every file system at or above the threshold, one row each, fullest first.
-- Hosts that could not be checked are listed too (with the error), so nothing goes unseen.
local PSEUDO = { tmpfs = true, devtmpfs = true, overlay = true, squashfs = true, udev = true, none = true }

return function(params, ctx)
	local rows = json.array()
	local unreachable = {}
	for _, r in ipairs(ssh.run(params.targets, "df -P -k -T")) do
		if not r.ok then
			table.insert(unreachable, { host = r.host, mount = "", error = r.error or r.stderr })
		else
			local first = true
			for line in string.gmatch(r.stdout, "[^\n]+") do
				if first then
					first = false -- the header
				else
					local dev, fstype, size, used, avail, pct, mount =
						string.match(line, "^(%S+)%s+(%S+)%s+(%d+)%s+(%d+)%s+(%d+)%s+(%d+)%%%s+(.+)$")
					if dev and (params.include_pseudo or not PSEUDO[fstype]) and tonumber(pct) >= params.threshold then
						table.insert(rows, {
							host = r.host,
							mount = mount,
							fstype = fstype,
							used_pct = tonumber(pct),
							size_gb = math.floor(tonumber(size) / 1048576 * 10 + 0.5) / 10,
							avail_gb = math.floor(tonumber(avail) / 1048576 * 10 + 0.5) / 10,
						})
					end
				end
			end
		end
	end
	table.sort(rows, function(a, b)
		if a.used_pct ~= b.used_pct then
			return a.used_pct > b.used_pct
		end
		return a.host < b.host
	end)
	log.info(string.format("%d file system(s) at or above %d%%; %d host(s) not checked", #rows, params.threshold, #unreachable))
	for _, u in ipairs(unreachable) do
		table.insert(rows, u)
	end
	return rows
end
