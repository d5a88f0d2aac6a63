-- service-restart: canary first, batches, stop_after, the is-active check after each restart,
-- the plan of a dry run, and unit names that are refused.

local RESTART = "sudo -n -H -u root -- sh -c 'systemctl restart nginx'"
local IS_ACTIVE = "sudo -n -H -u root -- sh -c 'systemctl is-active nginx'"

-- The rows without their timing (which depends on the machine).
local function rows_of(result)
	local out = {}
	for i, r in ipairs(result) do
		assert(type(r.seconds) == "number", "each row has its seconds")
		local copy = {}
		for k, v in pairs(r) do
			if k ~= "seconds" then
				copy[k] = v
			end
		end
		out[i] = copy
	end
	return out
end

local function healthy()
	fake("ssh.run", { command = "*systemctl restart *" }, { exit_code = 0 })
	fake("ssh.run", { command = "*systemctl is-active *" }, { stdout = "active\n" })
end

test("restarts with sudo everywhere, then checks each host is active", function()
	healthy()
	local result, err = run({ targets = "group:web", unit = "nginx" })
	assert.eq(err, nil)
	assert.eq(rows_of(result), {
		{ host = "web1", status = "restarted", state = "active", exit_code = 0 },
		{ host = "web2", status = "restarted", state = "active", exit_code = 0 },
		{ host = "web3", status = "restarted", state = "active", exit_code = 0 },
		{ host = "web4", status = "restarted", state = "active", exit_code = 0 },
		{ host = "web5", status = "restarted", state = "active", exit_code = 0 },
	})
	for _, h in ipairs({ "web1", "web2", "web3", "web4", "web5" }) do
		assert.called("ssh.run", { host = h, command = RESTART }, 1)
		assert.called("ssh.run", { host = h, command = IS_ACTIVE }, 1)
	end
	assert.not_called("ssh.run", { host = "db1" })
	-- the canary goes first, the status checks come after every restart
	local c = calls()
	assert.eq(c[1].target, "web1")
	assert.eq(c[1].args.command, RESTART)
	for i = 1, 5 do
		assert.eq(c[i].args.command, RESTART, "call " .. i)
	end
	for i = 6, 10 do
		assert.eq(c[i].args.command, IS_ACTIVE, "call " .. i)
	end
end)

test("a failing canary leaves every other host untouched", function()
	healthy()
	fake("ssh.run", { host = "web1", command = "*restart*" }, {
		exit_code = 1,
		stderr = "Job for nginx.service failed because the control process exited with error code.\n",
	})
	local result, err = run({ targets = "group:web", unit = "nginx" })
	assert.eq(err, nil)
	local rows = rows_of(result)
	assert.eq(rows[1], {
		host = "web1", status = "failed", exit_code = 1,
		error = "Job for nginx.service failed because the control process exited with error code.",
	})
	for i = 2, 5 do
		assert.eq(rows[i].status, "skipped")
		assert.contains(rows[i].error, "canary")
	end
	assert.eq(#calls(), 1, "only the canary was tried and nothing is checked")
	assert.not_called("ssh.run", { command = IS_ACTIVE })
end)

test("after stop_after failures the later batches are skipped", function()
	healthy()
	fake("ssh.run", { host = "web3", command = "*restart*" }, { exit_code = 5, stderr = "Failed to restart nginx.service: Unit nginx.service not found.\n" })
	local result = run({ targets = "group:web", unit = "nginx", batch = 1, stop_after = 1 })
	local status = {}
	for _, r in ipairs(result) do
		status[r.host] = r.status
	end
	assert.eq(status, { web1 = "restarted", web2 = "restarted", web3 = "failed", web4 = "skipped", web5 = "skipped" })
	assert.eq(result[3].error, "Failed to restart nginx.service: Unit nginx.service not found.")
	assert.eq(result[3].exit_code, 5)
	assert.not_called("ssh.run", { host = "web4" })
	assert.not_called("ssh.run", { host = "web5" })
	-- only the hosts that restarted are checked
	assert.called("ssh.run", { command = IS_ACTIVE }, 2)
	assert.not_called("ssh.run", { host = "web3", command = IS_ACTIVE })
end)

test("a larger stop_after keeps going past one failure", function()
	healthy()
	fake("ssh.run", { host = "web2", command = "*restart*" }, { error = "connect to 10.0.1.12:22: Connection refused" })
	local result = run({ targets = "group:web", unit = "nginx", batch = 1, stop_after = 2 })
	assert.eq(rows_of(result)[2], { host = "web2", status = "failed", error = "connect to 10.0.1.12:22: Connection refused" })
	for _, i in ipairs({ 1, 3, 4, 5 }) do
		assert.eq(result[i].status, "restarted", result[i].host)
	end
end)

test("a restart that exits 0 but leaves the unit down counts as failed", function()
	healthy()
	fake("ssh.run", { host = "web4", command = "*is-active*" }, { exit_code = 3, stdout = "failed\n" })
	fake("ssh.run", { host = "web5", command = "*is-active*" }, { exit_code = 3, stdout = "activating\n" })
	local result = run({ targets = "group:web", unit = "nginx" })
	local rows = rows_of(result)
	assert.eq(rows[4], { host = "web4", status = "failed", state = "failed", exit_code = 0 })
	assert.eq(rows[5], { host = "web5", status = "failed", state = "activating", exit_code = 0 })
	assert.eq(rows[1].status, "restarted")
end)

test("a host that times out during the restart is failed, not checked", function()
	healthy()
	fake("ssh.run", { host = "web2", command = "*restart*" }, { error = "timed out after 2m" })
	local result = run({ targets = "web1,web2", unit = "nginx" })
	assert.eq(rows_of(result)[2], { host = "web2", status = "failed", error = "timed out after 2m" })
	assert.not_called("ssh.run", { host = "web2", command = IS_ACTIVE })
end)

test("a dry run returns the plan and connects nowhere", function()
	healthy()
	local plan, err = run({ targets = "group:web", unit = "nginx.service" }, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(#calls(), 0)
	assert.eq(#plan, 5)
	for i, p in ipairs(plan) do
		assert.eq(p.host, "web" .. i)
		assert.truthy(p.planned)
		assert.eq(p.command, "sudo -n -H -u root -- sh -c 'systemctl restart nginx.service'")
	end
end)

test("template and dotted unit names are accepted", function()
	healthy()
	local result, err = run({ targets = "db1", unit = "postgresql@15-main.service" })
	assert.eq(err, nil)
	assert.eq(result[1].status, "restarted")
	assert.called("ssh.run", { host = "db1", command = "sudo -n -H -u root -- sh -c 'systemctl restart postgresql@15-main.service'" }, 1)
end)

test("unit names that are not units are refused before anything runs", function()
	healthy()
	for _, unit in ipairs({ "nginx; reboot", "nginx reboot", "--now", "-x", "$(id)", "nginx`id`", "" }) do
		local _, err = run({ targets = "group:web", unit = unit })
		assert.fails(err, "is not a systemd unit name")
	end
	assert.eq(#calls(), 0)
end)

test("params are checked before any host is asked", function()
	healthy()
	local _, err = run({ targets = "group:web" })
	assert.fails(err, "unit")
	_, err = run({ unit = "nginx" })
	assert.fails(err, "targets")
	_, err = run({ targets = "group:web", unit = "nginx", batch = 0 })
	assert.fails(err, "batch")
	_, err = run({ targets = "group:web", unit = "nginx", stop_after = 0 })
	assert.fails(err, "stop_after")
	_, err = run({ targets = "group:cache", unit = "nginx" })
	assert.fails(err, "matches no host")
	assert.eq(#calls(), 0)
end)
