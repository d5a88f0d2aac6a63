--- opslet.es: building Elasticsearch / OpenSearch queries for the es module.
--- local q = require "opslet.es"
--- es.search("logs-*", q.bool { filter = { q.term("level", "ERROR"), q.since("@timestamp", "15m") } })
local M = {}

--- Every document.
function M.all()
	return { match_all = {} }
end

--- Full-text match of `text` in `field`.
function M.match(field, text)
	return { match = { [field] = text } }
end

--- Exact value (keyword fields), or any of a list of values.
function M.term(field, value)
	if type(value) == "table" then
		return { terms = { [field] = value } }
	end
	return { term = { [field] = value } }
end

--- Range on a field: bounds like { gte = 10, lt = 20 } (dates may be "now-1h").
function M.range(field, bounds)
	return { range = { [field] = bounds } }
end

--- Documents whose time field is within the last `ago` ("15m", "2h", "1d").
function M.since(field, ago)
	if not string.match(ago, "^%d+[smhd]$") then
		error(string.format("opslet.es.since: %q is not a duration like 15m, 2h or 1d", ago), 2)
	end
	return { range = { [field] = { gte = "now-" .. ago } } }
end

--- Combines clauses: { must = {...}, filter = {...}, should = {...}, must_not = {...} }.
function M.bool(clauses)
	local out = {}
	for _, k in ipairs({ "must", "filter", "should", "must_not" }) do
		if clauses[k] then
			out[k] = clauses[k]
		end
	end
	for k in pairs(clauses) do
		if out[k] == nil and k ~= "minimum_should_match" then
			error(string.format("opslet.es.bool: unknown clause %q (must, filter, should, must_not)", tostring(k)), 2)
		end
	end
	out.minimum_should_match = clauses.minimum_should_match
	return { bool = out }
end

return M
