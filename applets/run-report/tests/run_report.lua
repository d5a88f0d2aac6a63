-- run-report: the history kept in kv, counts per caller and label, the recent list, the
-- 50-run cap, reset, and dry runs that change nothing. The tests of one applet share one
-- throwaway store, so each case starts with a reset.

local ISO = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"

test("a first run after a reset counts one run", function()
	local r, err = run({ reset = true })
	assert.eq(err, nil)
	assert.eq(r.total_runs, 1)
	assert.eq(r.by_caller, { test = 1 })
	assert.eq(r.by_label, { manual = 1 })
	assert.eq(r.dry_run, false)
	assert.eq(#r.recent, 1)
	assert.match(r.recent[1].at, ISO)
	r.recent[1].at = nil
	assert.eq(r.recent[1], { caller = "test", label = "manual", via = "test" })
end)

test("runs add up per label; recent lists the newest first", function()
	run({ reset = true, label = "OPS-1" })
	run({ label = "OPS-2" })
	run({ label = "OPS-2" })
	local r = run({ label = "OPS-3", show = 3 })
	assert.eq(r.total_runs, 4)
	assert.eq(r.by_label, { ["OPS-1"] = 1, ["OPS-2"] = 2, ["OPS-3"] = 1 })
	assert.eq(r.by_caller, { test = 4 })
	local labels = {}
	for i, x in ipairs(r.recent) do
		labels[i] = x.label
	end
	assert.eq(labels, { "OPS-3", "OPS-2", "OPS-2" })
end)

test("show = 0 lists no runs but still counts", function()
	run({ reset = true })
	local r = run({ show = 0 })
	assert.eq(r.total_runs, 2)
	assert.eq(r.recent, json.array())
	r = run({ show = 50 })
	assert.eq(#r.recent, 3, "show is capped by the history")
end)

test("the history keeps the last 50 runs; the total keeps counting", function()
	run({ reset = true, label = "old" })
	for i = 2, 55 do
		run({ label = if i <= 10 then "old" else "new" })
	end
	local r = run({ label = "new", show = 50 })
	assert.eq(r.total_runs, 56)
	-- the 6 oldest runs fell out of the history: 10 "old" runs, 4 left
	assert.eq(r.by_label, { old = 4, new = 46 })
	assert.eq(#r.recent, 50)
	assert.eq(r.recent[50].label, "old")
end)

test("reset forgets the history and the total", function()
	run({ reset = true })
	run({})
	run({})
	local r = run({ reset = true, label = "after-reset" })
	assert.eq(r.total_runs, 1)
	assert.eq(r.by_label, { ["after-reset"] = 1 })
end)

test("a dry run reports what it would record but changes nothing", function()
	run({ reset = true, label = "a" })
	run({ label = "b" })
	local dry, err = run({ label = "c" }, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(dry.dry_run, true)
	assert.eq(dry.total_runs, 3)
	assert.eq(dry.by_label, { a = 1, b = 1, c = 1 })
	-- even a dry-run reset leaves the store alone
	local dry_reset = run({ reset = true }, { dry_run = true })
	assert.eq(dry_reset.total_runs, 1)
	local after = run({ label = "d" })
	assert.eq(after.total_runs, 3)
	assert.eq(after.by_label, { a = 1, b = 1, d = 1 })
	assert.eq(#calls(), 0)
end)

test("bad params are refused", function()
	local _, err = run({ show = 51 })
	assert.fails(err, "show")
	_, err = run({ show = -1 })
	assert.fails(err, "show")
	_, err = run({ reset = "yes" })
	assert.fails(err, "reset")
	_, err = run({ label = 5 })
	assert.fails(err, "label")
end)
