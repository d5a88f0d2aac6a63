-- zabbix-triage: the problem.get filter (severity_min, since), the hosts from event.get, the
-- cmdb join, the order (worst, then newest first), and Zabbix failing.

-- A problem as Zabbix 6.0's problem.get returns it (ids, clocks and flags are strings).
local function problem(eventid, name, severity, clock, ack, tags)
	return {
		eventid = eventid, source = "0", object = "0", objectid = tostring(20000 + tonumber(eventid) % 1000),
		clock = clock, ns = "0", r_eventid = "0", r_clock = "0", r_ns = "0", correlationid = "0", userid = "0",
		name = name, acknowledged = ack or "0", severity = severity, opdata = "", suppressed = "0",
		urls = json.array(), acknowledges = json.array(), tags = tags or json.array(),
	}
end

local PROBLEMS = {
	problem("9005", "Free disk space is less than 5% on volume /", "3", "1717401000", "0", { { tag = "scope", value = "capacity" } }),
	problem("9004", "Zabbix agent is not available (for 3m)", "2", "1717400900", "1"),
	problem("9003", "Nginx: service is down", "5", "1717400500", "0", { { tag = "service", value = "nginx" }, { tag = "scope", value = "availability" } }),
	problem("9002", "PostgreSQL: too many connections", "4", "1717400400", "0", { { tag = "service", value = "postgresql" } }),
	problem("9001", "High CPU utilization (over 90% for 5m)", "4", "1717400000", "0"),
}

local EVENTS = {
	{ eventid = "9005", hosts = { { hostid = "10501", host = "db1" } } },
	{ eventid = "9004", hosts = { { hostid = "10502", host = "legacy7" } } },
	{ eventid = "9003", hosts = { { hostid = "10503", host = "web1" } } },
	{ eventid = "9002", hosts = { { hostid = "10501", host = "db1" } } },
	{ eventid = "9001", hosts = { { hostid = "10503", host = "web1" } } },
}

local function zabbix_answers()
	fake("zabbix.api", { target = "problem.get" }, PROBLEMS)
	fake("zabbix.api", { target = "event.get" }, EVENTS)
end

test("one row per problem, worst then newest first, with the cmdb's record", function()
	zabbix_answers()
	local rows, err = run({})
	assert.eq(err, nil)
	assert.eq(#rows, 5)
	local order = {}
	for i, r in ipairs(rows) do
		order[i] = r.eventid
	end
	-- disaster, then the two highs newest first, then average, then warning
	assert.eq(order, { "9003", "9002", "9001", "9005", "9004" })
	assert.eq(rows[1], {
		eventid = "9003", severity = "disaster", problem = "Nginx: service is down", host = "web1",
		since = rows[1].since, acknowledged = false, address = "10.0.1.11", groups = "prod, web", service = "nginx",
	})
	assert.eq(rows[1].since, "2024-06-03T07:41:40+00:00")
	assert.eq(rows[2].service, "postgresql")
	assert.eq(rows[2].address, "10.0.2.21")
	assert.eq(rows[3].service, nil)
	assert.eq(rows[4].severity, "average")
	-- a host Zabbix knows and the cmdb does not
	assert.eq(rows[5], {
		eventid = "9004", severity = "warning", problem = "Zabbix agent is not available (for 3m)", host = "legacy7",
		since = rows[5].since, acknowledged = true, groups = "(not in the cmdb)",
	})
end)

test("asks problem.get for warning or worse in the last 24h by default, then event.get for the hosts", function()
	zabbix_answers()
	run({})
	local c = calls("zabbix.api")
	assert.eq(#c, 2)
	assert.eq(c[1].target, "problem.get")
	assert.eq(c[1].args.severities, { 2, 3, 4, 5 })
	assert.eq(c[1].args.recent, false)
	assert.eq(type(c[1].args.time_from), "number")
	assert.eq(c[2].target, "event.get")
	assert.eq(c[2].args.eventids, { "9005", "9004", "9003", "9002", "9001" })
	assert.eq(c[2].args.selectHosts, { "host" })
end)

test("severity_min and since narrow the problem.get request", function()
	zabbix_answers()
	run({ severity_min = "high", since = "30m" })
	local c = calls("zabbix.api")
	assert.eq(c[1].args.severities, { 4, 5 })
	local t30 = c[1].args.time_from
	run({ severity_min = "information", since = "7d" })
	c = calls("zabbix.api")
	assert.eq(c[3].args.severities, { 1, 2, 3, 4, 5 })
	-- 7 days ago is 7d - 30m before 30 minutes ago (give or take the seconds between the runs)
	assert.truthy(math.abs((t30 - c[3].args.time_from) - (7 * 86400 - 1800)) <= 5, "time_from of 7d")
end)

test("no open problems: an empty list, and no event.get", function()
	fake("zabbix.api", { target = "problem.get" }, json.array())
	local rows, err = run({ severity_min = "disaster" })
	assert.eq(err, nil)
	assert.eq(rows, json.array())
	assert.not_called("zabbix.api", { target = "event.get" })
end)

test("a problem whose event has no host is kept, as ?", function()
	fake("zabbix.api", { target = "problem.get" }, { problem("9100", "Trigger on a template", "3", "1717400000") })
	fake("zabbix.api", { target = "event.get" }, { { eventid = "9100", hosts = json.array() } })
	local rows, err = run({})
	assert.eq(err, nil)
	assert.eq(rows[1].host, "?")
	assert.eq(rows[1].groups, "(not in the cmdb)")
	assert.eq(rows[1].address, nil)
end)

test("a Zabbix error fails the run with Zabbix's message", function()
	fake("zabbix.api", { target = "problem.get" }, { error = "Zabbix API error -32602: Invalid params. Session terminated, re-login, please." })
	local rows, err = run({})
	assert.eq(rows, nil)
	assert.fails(err, "Session terminated")
	assert.fails(err, "problem.get")
end)

test("event.get failing fails the run too", function()
	fake("zabbix.api", { target = "problem.get" }, PROBLEMS)
	fake("zabbix.api", { target = "event.get" }, { error = "Zabbix API error -32500: Application error. No permissions to referred object or it does not exist!" })
	local _, err = run({})
	assert.fails(err, "No permissions")
end)

test("a dry run reads as a real run does (it changes nothing)", function()
	zabbix_answers()
	local rows, err = run({}, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(#rows, 5)
	assert.called("zabbix.api", { target = "problem.get" }, 1)
end)

test("params are checked before Zabbix is asked", function()
	zabbix_answers()
	local _, err = run({ severity_min = "critical" })
	assert.fails(err, "severity_min")
	_, err = run({ since = 24 })
	assert.fails(err, "since")
	assert.eq(#calls(), 0)
	-- a since that is no time is refused by the module before anything is sent
	_, err = run({ since = "yesterday" })
	assert.fails(err, "since")
	assert.eq(#calls(), 0)
end)
