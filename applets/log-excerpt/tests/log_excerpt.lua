-- log-excerpt: the line shapes it recognizes, levels and min_level, and the summary's grouping
-- of similar messages. It calls no module.

local LOG = table.concat({
	"2024-05-01T10:00:00Z ERROR [api] upstream timed out talking to 10.0.0.5:8080 after 3000 ms",
	"2024-05-01T10:00:01.250+02:00 INFO [api] GET /healthz 200",
	"2024-05-01 10:00:02,120 WARN [db] slow query took 812 ms",
	"2024-05-01T10:00:03Z ERROR [api] upstream timed out talking to 10.0.0.7:8080 after 3100 ms",
	"May  1 10:00:04 web01 sshd[811]: Failed password for root from 192.0.2.4 port 52144 ssh2",
	"May 01 10:00:05 web01 systemd[1]: nginx.service: Main process exited, code=exited, status=1/FAILURE",
	"May  1 10:00:06 web02 kernel: [12345.678901] EXT4-fs (sda1): mounted filesystem with ordered data mode",
	"",
	"[DEBUG] cache miss for key 42",
	"   ",
	"FATAL: could not open lock file '/var/run/app.lock': Permission denied",
	"plain line without a level",
}, "\n")

test("each line shape gives time, level, source and message", function()
	local recs, err = run({ text = LOG, min_level = "debug" })
	assert.eq(err, nil)
	assert.eq(recs, {
		{ line = 1, time = "2024-05-01T10:00:00Z", level = "error", source = "api", message = "upstream timed out talking to 10.0.0.5:8080 after 3000 ms" },
		{ line = 2, time = "2024-05-01T10:00:01.250+02:00", level = "info", source = "api", message = "GET /healthz 200" },
		{ line = 3, time = "2024-05-01 10:00:02,120", level = "warn", source = "db", message = "slow query took 812 ms" },
		{ line = 4, time = "2024-05-01T10:00:03Z", level = "error", source = "api", message = "upstream timed out talking to 10.0.0.7:8080 after 3100 ms" },
		-- syslog: "fail" in the message makes it a warning
		{ line = 5, time = "May  1 10:00:04", level = "warn", source = "sshd@web01", message = "Failed password for root from 192.0.2.4 port 52144 ssh2" },
		{ line = 6, time = "May 01 10:00:05", level = "warn", source = "systemd@web01", message = "nginx.service: Main process exited, code=exited, status=1/FAILURE" },
		{ line = 7, time = "May  1 10:00:06", level = "info", source = "kernel@web02", message = "[12345.678901] EXT4-fs (sda1): mounted filesystem with ordered data mode" },
		-- blank lines are skipped but still counted
		{ line = 9, time = "", level = "debug", source = "", message = "cache miss for key 42" },
		{ line = 11, time = "", level = "error", source = "", message = "could not open lock file '/var/run/app.lock': Permission denied" },
		{ line = 12, time = "", level = "info", source = "", message = "plain line without a level" },
	})
end)

test("level words are recognized in any case and spelling", function()
	local text = table.concat({
		"2024-05-01T10:00:00Z Warning: disk 91% full",
		"2024-05-01T10:00:00Z crit [raid] array degraded",
		"2024-05-01T10:00:00Z notice [cron] job started",
		"2024-05-01T10:00:00Z TRACE entering handler",
		"2024-05-01T10:00:00Z Starting worker pool",
		"May  1 10:00:00 db1 postgres[99]: error: relation \"users\" does not exist",
		"May  1 10:00:00 db1 postgres[99]: panic: out of shared memory",
		"ERR something broke",
		"[warn] retrying",
	}, "\n")
	local recs = run({ text = text, min_level = "debug" })
	local levels, messages = {}, {}
	for i, r in ipairs(recs) do
		levels[i], messages[i] = r.level, r.message
	end
	assert.eq(levels, { "warn", "error", "info", "debug", "info", "error", "error", "error", "warn" })
	assert.eq(messages[1], "disk 91% full")
	assert.eq(messages[5], "Starting worker pool", "a first word that is no level stays in the message")
	assert.eq(recs[2].source, "raid")
	assert.eq(recs[6].message, "error: relation \"users\" does not exist", "syslog messages are kept whole")
	assert.eq(messages[8], "something broke")
end)

test("min_level drops lower levels", function()
	local recs = run({ text = LOG })
	assert.eq(#recs, 9, "the default is info: only the debug line goes")
	recs = run({ text = LOG, min_level = "warn" })
	local lines = {}
	for i, r in ipairs(recs) do
		lines[i] = r.line
	end
	assert.eq(lines, { 1, 3, 4, 5, 6, 11 })
	recs = run({ text = LOG, min_level = "error" })
	assert.eq(#recs, 3)
	for _, r in ipairs(recs) do
		assert.eq(r.level, "error")
	end
end)

test("the summary groups messages that differ only in numbers, addresses and ids", function()
	local text = LOG .. "\n" .. table.concat({
		"2024-05-01T10:01:00Z ERROR [api] upstream timed out talking to 10.0.0.9:8080 after 2950 ms",
		"2024-05-01T10:01:01Z WARN [db] slow query took 1204 ms",
		"2024-05-01T10:01:02Z ERROR [jobs] job 3f2a9c1e-7b4d-4e0a-9c55-0a1b2c3d4e5f failed with 0x7f",
		"2024-05-01T10:01:03Z ERROR [jobs] job 9a8b7c6d-1111-2222-3333-444455556666 failed with 0x1c",
		"2024-05-01T10:01:04Z ERROR [jobs] lookup of 'alice' failed",
		"2024-05-01T10:01:05Z ERROR [jobs] lookup of 'bob' failed",
	}, "\n")
	local s, err = run({ text = text, mode = "summary", min_level = "warn" })
	assert.eq(err, nil)
	assert.eq(s.lines, 12)
	assert.eq(s.by_level, { error = 8, warn = 4 })
	assert.eq(s.by_source, { api = 3, db = 2, jobs = 4, ["sshd@web01"] = 1, ["systemd@web01"] = 1, [""] = 1 })
	assert.eq(s.top, {
		{ message = "upstream timed out talking to <ip>:<n> after <n> ms", count = 3, level = "error", first_line = 1 },
		-- equal counts: the message seen first comes first
		{ message = "slow query took <n> ms", count = 2, level = "warn", first_line = 3 },
		{ message = "job <id> failed with <hex>", count = 2, level = "error", first_line = 15 },
		{ message = "lookup of '<v>' failed", count = 2, level = "error", first_line = 17 },
		{ message = "Failed password for root from <ip> port <n> ssh<n>", count = 1, level = "warn", first_line = 5 },
	})
	s = run({ text = text, mode = "summary", min_level = "warn", top = 2 })
	assert.eq(#s.top, 2)
	assert.eq(s.top[2].message, "slow query took <n> ms")
end)

test("text with nothing but blank lines gives empty results", function()
	local recs, err = run({ text = "\n   \n\t\n" })
	assert.eq(err, nil)
	assert.eq(#recs, 0)
	local s = run({ text = "\n\n", mode = "summary" })
	assert.eq(s.lines, 0)
	assert.eq(#s.top, 0)
end)

test("Windows line endings are handled", function()
	local recs = run({ text = "2024-05-01T10:00:00Z ERROR [api] boom\r\n2024-05-01T10:00:01Z INFO [api] ok\r\n" })
	assert.eq(#recs, 2)
	assert.eq(recs[1].message, "boom")
	assert.eq(recs[2].message, "ok")
end)

test("a dry run gives the same result", function()
	local real = run({ text = LOG, mode = "summary" })
	local dry, err = run({ text = LOG, mode = "summary" }, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(dry, real)
	assert.eq(#calls(), 0)
end)

test("bad params are refused", function()
	local _, err = run({})
	assert.fails(err, "param `text`: required string param is missing")
	_, err = run({ text = LOG, min_level = "critical" })
	assert.fails(err, "min_level")
	_, err = run({ text = LOG, mode = "table" })
	assert.fails(err, "mode")
	_, err = run({ text = LOG, mode = "summary", top = 0 })
	assert.fails(err, "top")
	_, err = run({ text = LOG, top = 101 })
	assert.fails(err, "top")
end)
