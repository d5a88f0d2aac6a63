-- hardware-check: which sensor readings and event-log entries make a server critical or
-- warning, an unreachable BMC, the order of the rows (worst first), and params.

local GOOD_SENSORS = {
	{ name = "CPU Temp", value = 45, unit = "C", upper_warning = 80, upper_critical = 90 },
	{ name = "Fan 1", value = 5400, unit = "RPM", lower_warning = 1000, lower_critical = 500 },
	{ name = "PSU1 Voltage", value = 12.1, unit = "V", lower_critical = 10.8, upper_critical = 13.2 },
}

local function healthy()
	fake("ipmi.check", { power = "on", sensors = GOOD_SENSORS, sel = {} })
end

local function by_host(rows)
	local out = {}
	for _, r in ipairs(rows) do
		out[r.host] = r
	end
	return out
end

test("healthy servers are ok, with their power and sensor count", function()
	healthy()
	local rows, err = run({ targets = "group:metal" })
	assert.eq(err, nil)
	assert.eq(#rows, 4)
	for i, host in ipairs({ "n1", "n2", "n3", "n4" }) do
		assert.eq(rows[i].host, host)
		assert.eq(rows[i].status, "ok")
		assert.eq(rows[i].power, "on")
		assert.eq(rows[i].sensors, 3)
		assert.eq(rows[i].problems, "")
		assert.eq(rows[i].error, nil)
	end
	-- the protocol follows the bmc tag: an https:// address is Redfish
	assert.eq(rows[1].protocol, "ipmi")
	assert.eq(rows[2].protocol, "redfish")
	assert.called("ipmi.check", { host = "n1", sel_limit = 50 }, 1)
	assert.eq(#calls(), 4)
end)

test("a sensor past its critical threshold makes the server critical", function()
	healthy()
	fake("ipmi.check", { host = "n2" }, {
		power = "on",
		sensors = {
			{ name = "CPU Temp", value = 95, unit = "C", upper_warning = 80, upper_critical = 90 },
			{ name = "Fan 1", value = 5400, unit = "RPM", lower_critical = 500 },
		},
		sel = {},
	})
	local r = by_host(run({ targets = "group:metal" }))
	assert.eq(r.n2.status, "critical")
	assert.contains(r.n2.problems, "sensor CPU Temp is critical (95 C)")
	assert.eq(r.n1.status, "ok")
end)

test("a low reading counts too: a fan under its lower critical threshold", function()
	healthy()
	fake("ipmi.check", { host = "n3" }, {
		power = "on",
		sensors = { { name = "Fan 2", value = 300, unit = "RPM", lower_warning = 1000, lower_critical = 500 } },
		sel = {},
	})
	local r = by_host(run({ targets = "group:metal" }))
	assert.eq(r.n3.status, "critical")
	assert.contains(r.n3.problems, "Fan 2")
end)

test("a sensor between its warning and critical thresholds is a warning", function()
	healthy()
	fake("ipmi.check", { host = "n1" }, {
		power = "on",
		sensors = { { name = "CPU Temp", value = 85, unit = "C", upper_warning = 80, upper_critical = 90 } },
		sel = {},
	})
	local r = by_host(run({ targets = "group:metal" }))
	assert.eq(r.n1.status, "warning")
	assert.contains(r.n1.problems, "CPU Temp")
end)

test("a status given by the BMC wins over the thresholds", function()
	healthy()
	fake("ipmi.check", { host = "n1" }, {
		power = "on",
		sensors = { { name = "Chassis Intrusion", value = 1, unit = "", status = "warning" } },
		sel = {},
	})
	assert.eq(by_host(run({ targets = "n1" })).n1.status, "warning")
end)

test("event-log entries: critical and warning count, info does not", function()
	healthy()
	fake("ipmi.check", { host = "n1" }, {
		power = "on", sensors = GOOD_SENSORS,
		sel = {
			{ id = "1", time = "2024-05-01T10:00:00Z", sensor = "PSU1", message = "Power supply failure", severity = "critical" },
		},
	})
	fake("ipmi.check", { host = "n2" }, {
		power = "on", sensors = GOOD_SENSORS,
		sel = {
			{ id = "4", time = "2024-05-01T10:00:00Z", sensor = "DIMM A1", message = "Correctable ECC", severity = "warning" },
			{ id = "5", time = "2024-05-01T10:01:00Z", sensor = "System", message = "Log area reset" },
		},
	})
	fake("ipmi.check", { host = "n3" }, {
		power = "on", sensors = GOOD_SENSORS,
		sel = {
			{ id = "9", time = "2024-05-01T10:00:00Z", sensor = "Button", message = "Power button pressed", severity = "info" },
			{ id = "10", time = "2024-05-01T10:00:01Z", sensor = "System", message = "OEM record" },
		},
	})
	local r = by_host(run({ targets = "group:metal" }))
	assert.eq(r.n1.status, "critical")
	assert.contains(r.n1.problems, "Power supply failure")
	assert.eq(r.n2.status, "warning")
	assert.contains(r.n2.problems, "Correctable ECC")
	assert.eq(r.n3.status, "ok")
	assert.eq(r.n3.problems, "")
end)

test("critical outranks warning, whichever comes first", function()
	healthy()
	fake("ipmi.check", { host = "n1" }, {
		power = "on",
		sensors = {
			{ name = "CPU Temp", value = 95, unit = "C", upper_critical = 90 },
			{ name = "Inlet Temp", value = 36, unit = "C", upper_warning = 35, upper_critical = 45 },
		},
		sel = { { id = "2", sensor = "DIMM B2", message = "Correctable ECC", severity = "warning" } },
	})
	fake("ipmi.check", { host = "n2" }, {
		power = "on",
		sensors = { { name = "Inlet Temp", value = 36, unit = "C", upper_warning = 35, upper_critical = 45 } },
		sel = { { id = "3", sensor = "PSU2", message = "Power supply lost", severity = "critical" } },
	})
	local r = by_host(run({ targets = "group:metal" }))
	assert.eq(r.n1.status, "critical")
	assert.eq(r.n2.status, "critical")
	assert.contains(r.n1.problems, "; ")
end)

test("a BMC that does not answer is unreachable; rows go worst first, then by name", function()
	healthy()
	fake("ipmi.check", { host = "n4" }, { error = "timeout" })
	fake("ipmi.check", { host = "n3" }, {
		power = "on", sensors = GOOD_SENSORS,
		sel = { { id = "1", sensor = "PSU1", message = "Power supply failure", severity = "critical" } },
	})
	fake("ipmi.check", { host = "n1" }, {
		power = "on", sensors = GOOD_SENSORS,
		sel = { { id = "1", sensor = "DIMM A1", message = "Correctable ECC", severity = "warning" } },
	})
	local rows, err = run({ targets = "group:metal" })
	assert.eq(err, nil)
	local order = {}
	for _, row in ipairs(rows) do
		table.insert(order, row.host .. " " .. row.status)
	end
	assert.eq(order, { "n4 unreachable", "n3 critical", "n1 warning", "n2 ok" })
	assert.eq(rows[1].error, "timeout")
	assert.eq(rows[1].sensors, nil)
	assert.eq(rows[1].problems, "")
end)

test("a server that is off is reported with its power state", function()
	fake("ipmi.check", { power = "off", sensors = {}, sel = {} })
	local rows = run({ targets = "n1" })
	assert.eq(rows[1].power, "off")
	assert.eq(rows[1].sensors, 0)
end)

test("sel_limit is passed on to each BMC", function()
	healthy()
	run({ targets = "n1,n2", sel_limit = 200 })
	assert.called("ipmi.check", { host = "n1", sel_limit = 200 }, 1)
	assert.called("ipmi.check", { host = "n2", sel_limit = 200 }, 1)
end)

test("a host without a bmc tag cannot be checked", function()
	healthy()
	local rows, err = run({ targets = "n1,vm1" })
	assert.eq(err, nil)
	assert.eq(rows[1].host, "vm1")
	assert.eq(rows[1].status, "unreachable")
	assert.contains(rows[1].error, "vm1 has no `bmc` tag")
	assert.eq(rows[2].status, "ok")
	assert.eq(rows[2].protocol, "ipmi")
	assert.not_called("ipmi.check", { host = "vm1" })
end)

test("a dry run still reads the BMCs: the check changes nothing", function()
	healthy()
	fake("ipmi.check", { host = "n2" }, { error = "timeout" })
	local rows, err = run({ targets = "group:metal" }, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(#rows, 4)
	assert.eq(rows[1].host, "n2")
	assert.eq(rows[1].status, "unreachable")
end)

test("params are checked before any BMC is asked", function()
	healthy()
	local _, err = run({})
	assert.fails(err, "targets")
	_, err = run({ targets = "group:metal", sel_limit = 5001 })
	assert.fails(err, "sel_limit")
	_, err = run({ targets = "group:metal", sel_limit = -1 })
	assert.fails(err, "sel_limit")
	_, err = run({ targets = "group:metal", concurrency = 0 })
	assert.fails(err, "concurrency")
	_, err = run({ targets = "group:nosuch" })
	assert.fails(err, "matches no host")
	assert.eq(#calls(), 0)
end)
