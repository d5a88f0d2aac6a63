-- Line parsing for log-excerpt.
local M = {}

local LEVELS = {
	trace = "debug", debug = "debug", dbg = "debug",
	info = "info", notice = "info", information = "info",
	warn = "warn", warning = "warn",
	error = "error", err = "error", crit = "error", critical = "error", fatal = "error", alert = "error", emerg = "error", panic = "error",
}

local function level_of(word)
	return word and LEVELS[string.lower(word)]
end

--- One line -> { time, level, source, message }.
function M.line(line)
	-- 2024-05-01T10:00:00Z ERROR [api] message   /   2024-05-01 10:00:00,123 WARN message
	local ts, rest = string.match(line, "^(%d%d%d%d%-%d%d%-%d%d[T ][%d:%.,]+Z?[%+%-%d:]*)%s+(.*)$")
	if ts then
		local word, after = string.match(rest, "^%[?(%a+)%]?:?%s+(.*)$")
		local level = level_of(word)
		if level then
			rest = after
		end
		local source, msg = string.match(rest, "^%[([^%]]+)%]%s*(.*)$")
		return { time = ts, level = level or "info", source = source or "", message = msg or rest }
	end
	-- May  1 10:00:00 host sshd[123]: message
	local sts, host, prog, msg = string.match(line, "^(%a%a%a%s+%d+%s+[%d:]+)%s+(%S+)%s+([^:%[]+)[^:]*:%s*(.*)$")
	if sts then
		local word = string.match(msg, "^(%a+):")
		local level = level_of(word) or (string.find(string.lower(msg), "fail") and "warn") or "info"
		return { time = sts, level = level, source = prog .. "@" .. host, message = msg }
	end
	local word, after = string.match(line, "^%[?(%a+)%]?:?%s+(.*)$")
	local level = level_of(word)
	return { time = "", level = level or "info", source = "", message = if level then after else line }
end

--- Replaces numbers, hex ids and quoted values so that similar messages group together.
function M.normalize(msg)
	local s = string.gsub(msg, "0x%x+", "<hex>")
	s = string.gsub(s, "%x%x%x%x%x%x%x%x%-[%x%-]+", "<id>")
	s = string.gsub(s, "%d+%.%d+%.%d+%.%d+", "<ip>")
	s = string.gsub(s, "%d+", "<n>")
	s = string.gsub(s, "'[^']*'", "'<v>'")
	return s
end

return M
