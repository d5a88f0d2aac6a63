-- alert-remediate: which problems get a restart and which only an acknowledgement, the evidence
-- query, the ssh restart, the acknowledgement's message and close flag, failures of Zabbix,
-- Elasticsearch and the host, and the plan of a dry run.

local RESTART_NGINX = "sudo -n -H -u root -- sh -c 'systemctl restart nginx'"

-- A problem as Zabbix 6.0's problem.get returns it (ids, clocks and flags are strings).
local function problem(eventid, name, severity, ack, tags)
	return {
		eventid = eventid, source = "0", object = "0", objectid = "23" .. eventid, clock = "1717400500", ns = "0",
		r_eventid = "0", r_clock = "0", r_ns = "0", correlationid = "0", userid = "0", name = name,
		acknowledged = ack, severity = severity, opdata = "", suppressed = "0", urls = json.array(),
		acknowledges = json.array(), tags = tags or json.array(),
	}
end

local PROBLEMS = {
	problem("9006", "Template trigger without a host", "4", "0", { { tag = "service", value = "nginx" } }),
	problem("9005", "Nginx: service is down", "5", "0", { { tag = "service", value = "nginx" } }),
	problem("9004", "Nginx: too many 5xx", "4", "1", { { tag = "service", value = "nginx" } }),
	problem("9003", "Nginx: slow responses", "2", "0", { { tag = "service", value = "nginx" } }),
	problem("9002", "Redis: service is down", "4", "0", { { tag = "service", value = "redis-server" } }),
	problem("9001", "Host has been restarted", "3", "0", { { tag = "scope", value = "notice" } }),
	problem("9000", "Evil tag", "4", "0", { { tag = "service", value = "nginx; reboot" } }),
}

local EVENTS = {
	{ eventid = "9006", hosts = json.array() },
	{ eventid = "9005", hosts = { { hostid = "10503", host = "web1" } } },
	{ eventid = "9004", hosts = { { hostid = "10503", host = "web1" } } },
	{ eventid = "9003", hosts = { { hostid = "10503", host = "web1" } } },
	{ eventid = "9002", hosts = { { hostid = "10777", host = "cache9" } } },
	{ eventid = "9001", hosts = { { hostid = "10501", host = "db1" } } },
	{ eventid = "9000", hosts = { { hostid = "10503", host = "web1" } } },
}

local function zabbix_answers()
	fake("zabbix.api", { target = "problem.get" }, PROBLEMS)
	fake("zabbix.api", { target = "event.get" }, EVENTS)
	fake("zabbix.api", { target = "event.acknowledge" }, { eventids = { 9005 } })
end

local function errors_in_logs(n)
	fake("es.count", { count = n })
end

local function the_ack()
	local acks = calls("zabbix.api")
	local out = {}
	for _, c in ipairs(acks) do
		if c.target == "event.acknowledge" then
			table.insert(out, c.args)
		end
	end
	assert.eq(#out, 1, "one acknowledgement")
	return out[1]
end

test("restarts the service of a bad open problem with errors in the logs, then acknowledges and closes it", function()
	zabbix_answers()
	errors_in_logs(12)
	fake("ssh.run", { host = "web1", command = RESTART_NGINX }, { exit_code = 0 })
	local result, err = run({ eventid = "9005" })
	assert.eq(err, nil)
	local why = "12 error(s) in the logs in the last 15 minutes"
	local message = "opslet alert-remediate: restarted nginx on web1 (" .. why .. ")"
	assert.eq(result, {
		eventid = "9005", problem = "Nginx: service is down", host = "web1", service = "nginx", errors_15m = 12,
		decision = "restart", reason = why, restart_ok = true, acknowledged = true, message = message,
	})
	assert.called("ssh.run", { host = "web1", command = RESTART_NGINX }, 1)
	-- acknowledge (2) + message (4) + close (1)
	assert.eq(the_ack(), { eventids = { "9005" }, action = 7, message = message })
end)

test("the evidence: ERROR lines of the service in the last 15 minutes of the index", function()
	zabbix_answers()
	errors_in_logs(3)
	fake("ssh.run", { exit_code = 0 })
	run({ eventid = "9005", index = "app-logs-*" })
	local c = calls("es.count")
	assert.eq(#c, 1)
	assert.eq(c[1].target, "app-logs-*")
	assert.eq(c[1].args, {
		query = {
			bool = {
				filter = {
					{ term = { level = "ERROR" } },
					{ term = { service = "nginx" } },
					{ range = { ["@timestamp"] = { gte = "now-15m" } } },
				},
			},
		},
	})
	-- the problem is looked up among the 500 newest open problems, of any severity
	local p = calls("zabbix.api")[1]
	assert.eq(p.target, "problem.get")
	assert.eq(p.args.limit, 500)
	assert.eq(p.args.severities, nil)
end)

test("too few errors in the logs: no restart, an acknowledgement saying why", function()
	zabbix_answers()
	errors_in_logs(2)
	local result, err = run({ eventid = "9005", min_errors = 3 })
	assert.eq(err, nil)
	assert.eq(result.decision, "leave")
	assert.eq(result.reason, "only 2 error(s) in the logs (the rule asks for 3)")
	assert.eq(result.acknowledged, true)
	assert.eq(result.restart_ok, nil)
	assert.not_called("ssh.run", {})
	-- acknowledge + message, not closed
	assert.eq(the_ack(), {
		eventids = { "9005" }, action = 6,
		message = "opslet alert-remediate: no action, only 2 error(s) in the logs (the rule asks for 3)",
	})
end)

test("min_errors defaults to 1; 0 restarts without evidence", function()
	zabbix_answers()
	errors_in_logs(0)
	fake("ssh.run", { exit_code = 0 })
	local result = run({ eventid = "9005" })
	assert.eq(result.decision, "leave")
	assert.eq(result.reason, "only 0 error(s) in the logs (the rule asks for 1)")
	assert.not_called("ssh.run", {})
	result = run({ eventid = "9005", min_errors = 0 })
	assert.eq(result.decision, "restart")
	assert.called("ssh.run", { host = "web1", command = RESTART_NGINX }, 1)
end)

test("a problem someone acknowledged is left alone and not acknowledged again", function()
	zabbix_answers()
	errors_in_logs(40)
	local result, err = run({ eventid = "9004" })
	assert.eq(err, nil)
	assert.eq(result.decision, "leave")
	assert.eq(result.reason, "already acknowledged by someone")
	assert.eq(result.acknowledged, false)
	assert.not_called("ssh.run", {})
	assert.not_called("zabbix.api", { target = "event.acknowledge" })
end)

test("a problem below average is acknowledged without a restart", function()
	zabbix_answers()
	errors_in_logs(40)
	local result = run({ eventid = "9003" })
	assert.eq(result.decision, "leave")
	assert.eq(result.reason, "severity warning is below average")
	assert.not_called("ssh.run", {})
	assert.eq(the_ack().message, "opslet alert-remediate: no action, severity warning is below average")
	-- average is enough
	fake("ssh.run", { exit_code = 0 })
	result = run({ eventid = "9001", service = "nginx" })
	assert.eq(result.decision, "restart")
	assert.called("ssh.run", { host = "db1", command = RESTART_NGINX }, 1)
end)

test("a host the cmdb does not know is not restarted", function()
	zabbix_answers()
	errors_in_logs(40)
	local result = run({ eventid = "9002" })
	assert.eq(result.host, "cache9")
	assert.eq(result.service, "redis-server")
	assert.eq(result.decision, "leave")
	assert.eq(result.reason, "the host cache9 is not in the cmdb")
	assert.not_called("ssh.run", {})
	assert.eq(the_ack().action, 6)
end)

test("a problem without a host is not restarted", function()
	zabbix_answers()
	errors_in_logs(40)
	local result, err = run({ eventid = "9006" })
	assert.eq(err, nil)
	assert.eq(result.decision, "leave")
	assert.eq(result.host, nil)
	assert.eq(result.reason, "the problem has no host")
	assert.eq(the_ack().message, "opslet alert-remediate: no action, the problem has no host")
	assert.not_called("ssh.run", {})
end)

test("an event id that is not an open problem: nothing is done", function()
	zabbix_answers()
	local result, err = run({ eventid = "12345" })
	assert.eq(err, nil)
	assert.eq(result, { eventid = "12345", action = "none", reason = "no open problem with this event id" })
	assert.not_called("es.count", {})
	assert.not_called("zabbix.api", { target = "event.acknowledge" })
	assert.eq(#calls(), 2)
end)

test("the service param wins over the problem's tag", function()
	zabbix_answers()
	errors_in_logs(5)
	fake("ssh.run", { exit_code = 0 })
	local result = run({ eventid = "9005", service = "nginx@edge.service" })
	assert.eq(result.service, "nginx@edge.service")
	assert.eq(calls("es.count")[1].args.query.bool.filter[2], { term = { service = "nginx@edge.service" } })
	assert.called("ssh.run", { host = "web1", command = "sudo -n -H -u root -- sh -c 'systemctl restart nginx@edge.service'" }, 1)
end)

test("no service, or one that is not a unit name, is an error before anything is asked of the logs", function()
	zabbix_answers()
	errors_in_logs(5)
	local _, err = run({ eventid = "9001" })
	assert.fails(err, "no usable service for event 9001")
	_, err = run({ eventid = "9000" })
	assert.fails(err, "no usable service for event 9000")
	_, err = run({ eventid = "9005", service = "nginx && reboot" })
	assert.fails(err, "no usable service")
	assert.not_called("es.count", {})
	assert.not_called("ssh.run", {})
	assert.not_called("zabbix.api", { target = "event.acknowledge" })
end)

test("a restart that fails is reported in the acknowledgement, which leaves the problem open", function()
	zabbix_answers()
	errors_in_logs(7)
	fake("ssh.run", { host = "web1" }, { exit_code = 1, stderr = "Job for nginx.service failed because the control process exited with error code.\n" })
	local result, err = run({ eventid = "9005" })
	assert.eq(err, nil)
	assert.eq(result.restart_ok, false)
	assert.eq(result.restart_error, "Job for nginx.service failed because the control process exited with error code.")
	local message = "opslet alert-remediate: restarting nginx on web1 FAILED: "
		.. "Job for nginx.service failed because the control process exited with error code. (7 error(s) in the logs in the last 15 minutes)"
	assert.eq(result.message, message)
	assert.eq(the_ack(), { eventids = { "9005" }, action = 6, message = message })
end)

test("a host that cannot be reached is reported the same way", function()
	zabbix_answers()
	errors_in_logs(7)
	fake("ssh.run", { host = "web1" }, { error = "connect to 10.0.1.11:22: Connection refused" })
	local result = run({ eventid = "9005" })
	assert.eq(result.restart_ok, false)
	assert.eq(result.restart_error, "connect to 10.0.1.11:22: Connection refused")
	assert.contains(the_ack().message, "FAILED: connect to 10.0.1.11:22: Connection refused")
	assert.eq(the_ack().action, 6)
end)

test("Elasticsearch failing stops the run before any restart or acknowledgement", function()
	zabbix_answers()
	fake("es.count", { error = "logs answered HTTP 503: search_phase_execution_exception: all shards failed" })
	local result, err = run({ eventid = "9005" })
	assert.eq(result, nil)
	assert.fails(err, "all shards failed")
	assert.not_called("ssh.run", {})
	assert.not_called("zabbix.api", { target = "event.acknowledge" })
end)

test("Zabbix failing to list the problems fails the run", function()
	fake("zabbix.api", { target = "problem.get" }, { error = "Zabbix API error -32500: Application error. Connection to database 'zabbix' failed." })
	local _, err = run({ eventid = "9005" })
	assert.fails(err, "Connection to database")
	assert.eq(#calls(), 1)
end)

test("an acknowledgement Zabbix refuses fails the run, after the restart", function()
	zabbix_answers()
	errors_in_logs(4)
	fake("ssh.run", { exit_code = 0 })
	fake("zabbix.api", { target = "event.acknowledge" }, { error = "Zabbix API error -32500: Application error. Cannot close problem: trigger does not allow manual closing." })
	local _, err = run({ eventid = "9005" })
	assert.fails(err, "does not allow manual closing")
	assert.called("ssh.run", { host = "web1", command = RESTART_NGINX }, 1)
end)

test("a dry run plans the restart and the acknowledgement, and changes nothing", function()
	zabbix_answers()
	errors_in_logs(12)
	fake("ssh.run", { exit_code = 0 })
	local plan, err = run({ eventid = "9005" }, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(plan.decision, "restart")
	assert.eq(plan.planned_command, RESTART_NGINX)
	assert.eq(plan.message, "opslet alert-remediate would restart nginx on web1 (12 error(s) in the logs in the last 15 minutes)")
	assert.not_called("ssh.run", {})
	assert.not_called("zabbix.api", { target = "event.acknowledge" })
	-- the problem and the evidence are still read
	assert.called("es.count", {}, 1)
	-- and when it would leave the problem alone, it does not acknowledge either
	errors_in_logs(0)
	plan = run({ eventid = "9005" }, { dry_run = true })
	assert.eq(plan.decision, "leave")
	assert.eq(plan.acknowledged, false)
	assert.not_called("zabbix.api", { target = "event.acknowledge" })
end)

test("params are checked before anything is asked", function()
	zabbix_answers()
	errors_in_logs(1)
	local _, err = run({})
	assert.fails(err, "eventid")
	_, err = run({ eventid = "9005", min_errors = -1 })
	assert.fails(err, "min_errors")
	_, err = run({ eventid = 9005 })
	assert.fails(err, "eventid")
	assert.eq(#calls(), 0)
end)

test("a hidden index is refused by the es module, not searched", function()
	zabbix_answers()
	errors_in_logs(1)
	local _, err = run({ eventid = "9005", index = ".security" })
	assert.fails(err, "es.count")
	assert.not_called("es.count", {})
	assert.not_called("ssh.run", {})
end)
