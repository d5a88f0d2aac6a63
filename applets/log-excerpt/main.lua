-- Parses common log line shapes: syslog, ISO timestamps with levels, and bare lines.
local str = require "opslet.strings"
local tbl = require "opslet.tables"
local parse = require "parse"

local RANK = { debug = 1, info = 2, warn = 3, error = 4 }

return function(params)
	local min = RANK[params.min_level]
	local records = {}
	for n, line in ipairs(str.lines(params.text)) do
		if str.trim(line) ~= "" then
			local rec = parse.line(line)
			rec.line = n
			if RANK[rec.level] >= min then
				table.insert(records, rec)
			end
		end
	end
	log.info(string.format("%d matching lines", #records))
	if params.mode == "records" then
		return json.array(records)
	end

	local by_message = {}
	for _, r in ipairs(records) do
		local key = parse.normalize(r.message)
		local entry = by_message[key] or { message = key, count = 0, level = r.level, first_line = r.line }
		entry.count += 1
		by_message[key] = entry
	end
	local top = {}
	for _, e in pairs(by_message) do
		table.insert(top, e)
	end
	top = tbl.take(tbl.sort_by(top, function(e)
		return e.count * 100000 - e.first_line
	end, true), params.top)
	return {
		lines = #records,
		by_level = tbl.count_by(records, "level"),
		by_source = tbl.count_by(records, "source"),
		top = json.array(top),
	}
end
