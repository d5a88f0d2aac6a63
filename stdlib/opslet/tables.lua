--- opslet.tables: list and record helpers for applets.
--- local tbl = require "opslet.tables"
local M = {}

function M.map(list, fn)
	local out = {}
	for i, v in ipairs(list) do
		out[i] = fn(v, i)
	end
	return out
end

function M.filter(list, pred)
	local out = {}
	for i, v in ipairs(list) do
		if pred(v, i) then
			table.insert(out, v)
		end
	end
	return out
end

--- Sorted keys of a table.
function M.keys(t)
	local out = {}
	for k in pairs(t) do
		table.insert(out, k)
	end
	table.sort(out, function(a, b)
		return tostring(a) < tostring(b)
	end)
	return out
end

--- Number of entries of any table (not just the array part).
function M.count(t)
	local n = 0
	for _ in pairs(t) do
		n += 1
	end
	return n
end

--- Groups records by the value of `key` (or by what `key(record)` returns).
function M.group_by(list, key)
	local out = {}
	for _, v in ipairs(list) do
		local k = if type(key) == "function" then key(v) else v[key]
		out[k] = out[k] or {}
		table.insert(out[k], v)
	end
	return out
end

--- Counts records per value of `key`: {["a"] = 3, ...}.
function M.count_by(list, key)
	local out = {}
	for _, v in ipairs(list) do
		local k = if type(key) == "function" then key(v) else v[key]
		out[k] = (out[k] or 0) + 1
	end
	return out
end

--- Returns a new list sorted by `key` (a field name or function); `desc = true` reverses.
function M.sort_by(list, key, desc)
	local out = table.clone(list)
	local get = if type(key) == "function" then key else function(v)
		return v[key]
	end
	table.sort(out, function(a, b)
		local x, y = get(a), get(b)
		if desc then
			return x > y
		end
		return x < y
	end)
	return out
end

--- The first `n` items of a list.
function M.take(list, n)
	local out = {}
	for i = 1, math.min(n, #list) do
		out[i] = list[i]
	end
	return out
end

return M
