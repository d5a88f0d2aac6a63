-- log-errors: errors per service (level ERROR, @timestamp within the window), most first.
-- Fields expected: @timestamp, level, service, message (the usual structured-log layout).
local q = require "opslet.es"

return function(params)
	local filter = { q.term("level", "ERROR"), q.since("@timestamp", params.minutes .. "m") }
	if params.service then
		table.insert(filter, q.term("service", params.service))
	end
	local query = q.bool({ filter = filter })
	local aggs = es.aggs(params.index, { by_service = { terms = { field = "service", size = 50 } } }, query)
	local rows = json.array()
	for _, b in ipairs(aggs.by_service.buckets) do
		local latest = {}
		if params.top > 0 then
			local found = es.search(params.index, q.bool({ filter = { q.term("level", "ERROR"), q.term("service", b.key), q.since("@timestamp", params.minutes .. "m") } }), {
				size = params.top,
				sort = { { ["@timestamp"] = "desc" } },
				source = { "message" },
			})
			for _, h in ipairs(found.hits) do
				-- A document without a message (or with `"message": null`) has none to show.
				local m = type(h.source) == "table" and h.source.message or nil
				if m ~= nil and m ~= json.null then
					table.insert(latest, string.sub(tostring(m), 1, 200))
				end
			end
		end
		table.insert(rows, { service = b.key, errors = b.doc_count, latest = table.concat(latest, " | ") })
	end
	log.info(string.format("%d service(s) with errors in the last %d minute(s)", #rows, params.minutes))
	return rows
end
