-- time: clocks, sleep, RFC 3339 round trips.
return function()
	local t0, c0 = time.now(), time.clock()
	assert(t0 > 1.7e9, "now is a Unix time in seconds")
	time.sleep(0.05)
	assert(time.clock() - c0 >= 0.045, "sleep waits")
	assert(time.now() >= t0)
	assert(time.iso(0) == "1970-01-01T00:00:00.000Z", time.iso(0))
	assert(time.parse("2024-05-01T10:00:00Z") == 1714557600)
	assert(time.parse(time.iso(1714557600.5)) == 1714557600.5)
	local ok, err = pcall(time.parse, "yesterday")
	assert(not ok and string.find(err, "not an RFC 3339 time"), err)
	ok, err = pcall(time.sleep, -1)
	assert(not ok and string.find(err, "non%-negative"), err)
	return "ok"
end
