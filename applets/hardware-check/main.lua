-- hardware-check: one row per server, worst first. A server is "critical" when a sensor is past
-- its critical threshold or the event log holds a critical entry, "warning" for the non-critical
-- ones, "unreachable" when its BMC did not answer.
local rank = { unreachable = 0, critical = 1, warning = 2, ok = 3 }

return function(params)
	local results = ipmi.check(params.targets, { sel_limit = params.sel_limit, concurrency = params.concurrency })
	local rows = json.array()
	local counts = { ok = 0, warning = 0, critical = 0, unreachable = 0 }
	for _, r in ipairs(results) do
		local status = "ok"
		if not r.ok then
			status = "unreachable"
		else
			for _, s in ipairs(r.sensors or {}) do
				if s.status == "critical" then
					status = "critical"
				elseif s.status == "warning" and status == "ok" then
					status = "warning"
				end
			end
			for _, e in ipairs(r.sel or {}) do
				if e.severity == "critical" then
					status = "critical"
				elseif e.severity == "warning" and status == "ok" then
					status = "warning"
				end
			end
		end
		counts[status] += 1
		table.insert(rows, {
			host = r.host,
			status = status,
			power = r.power,
			protocol = r.protocol,
			sensors = r.sensors and #r.sensors or nil,
			problems = table.concat(r.problems or {}, "; "),
			error = r.error,
		})
	end
	table.sort(rows, function(a, b)
		if rank[a.status] ~= rank[b.status] then
			return rank[a.status] < rank[b.status]
		end
		return a.host < b.host
	end)
	log.info(string.format("%d ok, %d warning, %d critical, %d unreachable", counts.ok, counts.warning, counts.critical, counts.unreachable))
	return rows
end
