--- opslet.text: turning command output into records.
--- local text = require "opslet.text"
local strings = require "opslet.strings"
local M = {}

--- Parses `key=value` (or `key: value`) lines into a table; other lines are ignored.
function M.key_values(s)
	local out = {}
	for _, line in ipairs(strings.lines(s)) do
		local k, v = string.match(line, "^%s*([%w_%.%-]+)%s*[=:]%s*(.-)%s*$")
		if k then
			out[k] = v
		end
	end
	return out
end

--- Parses whitespace-separated columns with a header line (`df -P`, `ps aux`) into records.
--- The last column takes the rest of the line.
function M.columns(s)
	local lines = strings.lines(s)
	local out = {}
	if #lines == 0 then
		return out
	end
	local header = {}
	for word in string.gmatch(lines[1], "%S+") do
		table.insert(header, string.lower(word))
	end
	for i = 2, #lines do
		local line = lines[i]
		if string.match(line, "%S") then
			local rec, pos = {}, 1
			for c = 1, #header do
				local s1, e1 = string.find(line, "%S+", pos)
				if not s1 then
					break
				end
				if c == #header then
					rec[header[c]] = strings.trim(string.sub(line, s1))
				else
					rec[header[c]] = string.sub(line, s1, e1)
					pos = e1 + 1
				end
			end
			table.insert(out, rec)
		end
	end
	return out
end

--- Converts a string to a number when it looks like one ("42", "3.5", "17%" -> 17).
function M.number(s)
	if type(s) ~= "string" then
		return tonumber(s)
	end
	return tonumber((string.gsub(s, "%%$", "")))
end

return M
