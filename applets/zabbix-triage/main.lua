-- zabbix-triage: one row per open problem, worst and newest first, with the host's cmdb record.
return function(params)
	local rows = json.array()
	for _, p in ipairs(zabbix.problems({ severity_min = params.severity_min, since = params.since })) do
		-- A problem without a host has `host = json.null` (truthy), not nil.
		local name = type(p.host) == "string" and p.host or nil
		local h = name and cmdb.host(name)
		table.insert(rows, {
			eventid = p.eventid,
			severity = p.severity_name,
			problem = p.name,
			host = name or "?",
			since = p.clock,
			acknowledged = p.acknowledged,
			address = h and h.address or nil,
			groups = h and table.concat(h.groups, ", ") or "(not in the cmdb)",
			service = p.tags.service,
		})
	end
	table.sort(rows, function(a, b)
		if a.severity ~= b.severity then
			local rank = { disaster = 5, high = 4, average = 3, warning = 2, information = 1 }
			return (rank[a.severity] or 0) > (rank[b.severity] or 0)
		end
		return a.since > b.since
	end)
	log.info(string.format("%d open problem(s) at %s or worse", #rows, params.severity_min))
	return rows
end
