-- opslet.strings / opslet.tables / opslet.text helpers.
local str = require "opslet.strings"
local tbl = require "opslet.tables"
local text = require "opslet.text"

return function()
	local parts = str.split("a,b,,c", ",")
	assert(#parts == 4 and parts[3] == "" and parts[4] == "c")
	assert(#str.split("", ",") == 0)
	assert(str.split("a.b", ".")[2] == "b", "separator is plain, not a pattern")
	assert(str.trim("  x y \n") == "x y")
	assert(str.starts_with("web01", "web") and not str.starts_with("db", "web"))
	assert(str.ends_with("a.log", ".log"))
	assert(str.pad("7", 3, true) == "  7" and str.pad("ab", 3) == "ab ")
	assert(#str.lines("a\nb\r\nc\n") == 3)
	assert(str.template("{host}:{port} {x}", { host = "h", port = 22 }) == "h:22 {x}")

	local list = { { n = "b", v = 2 }, { n = "a", v = 3 }, { n = "c", v = 1 } }
	assert(tbl.sort_by(list, "n")[1].n == "a")
	assert(tbl.sort_by(list, "v", true)[1].v == 3)
	assert(list[1].n == "b", "sort_by does not modify its input")
	assert(#tbl.filter(list, function(r) return r.v > 1 end) == 2)
	assert(tbl.map({ 1, 2 }, function(x) return x * 10 end)[2] == 20)
	assert(tbl.count({ a = 1, b = 2 }) == 2)
	assert(tbl.keys({ b = 1, a = 2 })[1] == "a")
	assert(#tbl.group_by(list, function(r) return r.v > 1 end)[true] == 2)
	assert(tbl.count_by({ { s = "x" }, { s = "x" }, { s = "y" } }, "s").x == 2)
	assert(#tbl.take({ 1, 2, 3 }, 2) == 2)

	local kvs = text.key_values("NAME=web01\nversion: 2\n# comment\n")
	assert(kvs.NAME == "web01" and kvs.version == "2")
	local rows = text.columns("Filesystem Size Use% Mounted on\n/dev/sda1 10G 42% /\n/dev/sdb1 20G 91% /var/lib data\n")
	assert(#rows == 2 and rows[2]["use%"] == "91%", json.encode(rows))
	assert(text.number(rows[2]["use%"]) == 91)
	return "ok"
end
