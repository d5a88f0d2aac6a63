--- opslet.strings: string helpers for applets.
--- local str = require "opslet.strings"
local M = {}

--- Splits `s` on a plain (non-pattern) separator. `str.split("a,b,,c", ",")` -> {"a","b","","c"}
function M.split(s, sep)
	sep = sep or ","
	if sep == "" then
		error("strings.split: the separator must not be empty", 2)
	end
	local out = {}
	if s == "" then
		return out
	end
	local start = 1
	while true do
		local i, j = string.find(s, sep, start, true)
		if not i then
			table.insert(out, string.sub(s, start))
			return out
		end
		table.insert(out, string.sub(s, start, i - 1))
		start = j + 1
	end
end

--- Removes leading and trailing whitespace.
function M.trim(s)
	return (string.gsub(s, "^%s*(.-)%s*$", "%1"))
end

function M.starts_with(s, prefix)
	return string.sub(s, 1, #prefix) == prefix
end

function M.ends_with(s, suffix)
	return suffix == "" or string.sub(s, -#suffix) == suffix
end

--- Pads `s` on the right (or the left, with `left = true`) to `width` characters (UTF-8 aware).
function M.pad(s, width, left)
	s = tostring(s)
	local n = width - (utf8.len(s) or #s)
	if n <= 0 then
		return s
	end
	return left and (string.rep(" ", n) .. s) or (s .. string.rep(" ", n))
end

--- Splits text into lines (without the newline characters).
function M.lines(s)
	local out = {}
	for line in string.gmatch(s .. "\n", "(.-)\r?\n") do
		table.insert(out, line)
	end
	if out[#out] == "" then
		table.remove(out)
	end
	return out
end

--- Replaces `{name}` placeholders with values from `vars`; unknown names are left as they are.
function M.template(s, vars)
	return (string.gsub(s, "{([%w_]+)}", function(k)
		local v = vars[k]
		if v == nil then
			return nil
		end
		return tostring(v)
	end))
end

return M
