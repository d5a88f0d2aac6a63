-- vlan-provision: the lines each vendor gets (create and remove), save, the canary and stopping
-- after a rejected line, devices that time out, a dry run, and the checks of params and name.

local function by_host(rows)
	local out = {}
	for _, r in ipairs(rows) do
		out[r.host] = r
	end
	return out
end

test("each vendor gets the VLAN in its own words, and the change is saved", function()
	fake("netdev.config", {})
	local rows, err = run({ devices = "group:switches", vlan = 42, name = "users" })
	assert.eq(err, nil)
	assert.eq(#rows, 6)
	local r = by_host(rows)
	for _, row in ipairs(rows) do
		assert.eq(row.status, "done")
		assert.eq(row.rejected, nil)
	end
	assert.called("netdev.config", { target = "sw1", lines = { "vlan 42", "name users", "exit" }, save = true }, 1)
	assert.called("netdev.config", { target = "sw2", lines = { "vlan 42", "name users", "exit" }, save = true }, 1)
	assert.called("netdev.config", { target = "hw1", lines = { "vlan 42", "description users", "quit" }, save = true }, 1)
	assert.called("netdev.config", { target = "h3c1", lines = { "vlan 42", "name users", "quit" }, save = true }, 1)
	assert.called("netdev.config", { target = "jn1", lines = { "set vlans users vlan-id 42" }, save = true }, 1)
	assert.eq(r.sw1.lines, "vlan 42\nname users\nexit")
	assert.eq(r.sw2.profile, "cisco_ios")
	assert.eq(r.h3c1.profile, "hp_comware")
	assert.eq(r.jn1.lines, "set vlans users vlan-id 42")
	assert.eq(#calls("netdev.config"), 6)
end)

test("saved comes from the device's answer; save = false asks for no save", function()
	fake("netdev.config", { saved = true })
	local rows = run({ devices = "sw1", vlan = 42, name = "users" })
	assert.eq(rows[1].saved, true)

	fake("netdev.config", {})
	rows = run({ devices = "sw1", vlan = 42, name = "users", save = false })
	assert.eq(rows[1].status, "done")
	assert.eq(rows[1].saved, false)
	assert.called("netdev.config", { target = "sw1", save = false }, 1)
end)

test("remove sends each vendor's removal", function()
	fake("netdev.config", {})
	local rows, err = run({ devices = "group:switches", vlan = 42, name = "users", remove = true })
	assert.eq(err, nil)
	assert.called("netdev.config", { target = "sw1", lines = { "no vlan 42" } }, 1)
	assert.called("netdev.config", { target = "hw1", lines = { "undo vlan 42" } }, 1)
	assert.called("netdev.config", { target = "h3c1", lines = { "undo vlan 42" } }, 1)
	assert.called("netdev.config", { target = "jn1", lines = { "delete vlans users" } }, 1)
	assert.eq(by_host(rows).sw1.lines, "no vlan 42")
end)

test("a line rejected on the canary stops the change: no other device is touched", function()
	fake("netdev.config", {})
	-- h3c1 comes first by name: it is the canary
	fake("netdev.config", { target = "h3c1" }, { rejected = "vlan 42", message = "% VLAN 42 is reserved" })
	local rows, err = run({ devices = "group:switches", vlan = 42, name = "users" })
	assert.eq(err, nil)
	assert.eq(rows[1].host, "h3c1")
	assert.eq(rows[1].status, "failed")
	assert.eq(rows[1].rejected, "vlan 42")
	assert.eq(rows[1].saved, false)
	assert.contains(rows[1].error, "was rejected")
	for i = 2, #rows do
		assert.eq(rows[i].status, "skipped")
	end
	assert.eq(#calls("netdev.config"), 1)
end)

test("a rejected line after the canary: the device failed, the lines before it stay applied", function()
	fake("netdev.config", {})
	fake("netdev.config", { target = "sw1" }, { rejected = "name users", message = "% Invalid input detected at '^' marker." })
	local rows = run({ devices = "group:cisco", vlan = 42, name = "users" })
	local r = by_host(rows)
	assert.eq(r.sw1.status, "failed")
	assert.eq(r.sw1.rejected, "name users")
	assert.contains(r.sw1.error, "line 2 `name users` was rejected")
	assert.contains(r.sw1.error, "line 1 was applied before it")
	assert.eq(r.sw1.saved, false)
	-- nothing takes line 1 back: vlan-provision has no rollback step, sw1 keeps an unnamed VLAN 42
	assert.not_called("netdev.config", { target = "sw1", lines = { "no vlan 42" } })
	assert.called("netdev.config", { target = "sw1" }, 1)
end)

test("without the canary, devices are not held back by a first one; a failure stops the rest", function()
	fake("netdev.config", {})
	fake("netdev.config", { target = "sw1" }, { rejected = "vlan 42", message = "% VLAN 42 is reserved" })
	local rows, err = run({ devices = "group:switches", vlan = 42, name = "users", canary = false })
	assert.eq(err, nil)
	local r = by_host(rows)
	assert.eq(r.sw1.status, "failed")
	assert.eq(r.sw1.rejected, "vlan 42")
	-- Devices run at once, so which of the others sw1's failure reaches first varies: each is
	-- done, or skipped without a call (stop_after = 1: not yet started when sw1 failed).
	for _, host in ipairs({ "h3c1", "hw1", "jn1", "sw2", "sw3" }) do
		if r[host].status == "skipped" then
			assert.contains(r[host].error, "stop_after = 1")
			assert.not_called("netdev.config", { target = host })
		else
			assert.eq(r[host].status, "done")
		end
	end
end)

test("a device that times out is failed; with the canary done, the others go on", function()
	fake("netdev.config", {})
	fake("netdev.config", { target = "sw3" }, { error = "timeout" })
	local rows, err = run({ devices = "group:cisco", vlan = 42, name = "users" })
	assert.eq(err, nil)
	local r = by_host(rows)
	assert.eq(r.sw1.status, "done")
	assert.eq(r.sw3.status, "failed")
	assert.eq(r.sw3.error, "timeout")
end)

test("a canary that times out skips the rest", function()
	fake("netdev.config", {})
	fake("netdev.config", { target = "h3c1" }, { error = "timeout" })
	local rows = run({ devices = "group:switches", vlan = 42, name = "users" })
	assert.eq(rows[1].status, "failed")
	assert.eq(rows[1].error, "timeout")
	assert.eq(rows[2].status, "skipped")
	assert.eq(#calls("netdev.config"), 1)
end)

test("a dry run sends nothing and shows each device's lines", function()
	local rows, err = run({ devices = "group:switches", vlan = 42, name = "users" }, { dry_run = true })
	assert.eq(err, nil)
	local r = by_host(rows)
	for _, row in ipairs(rows) do
		assert.eq(row.status, "planned")
		assert.eq(row.saved, false)
	end
	assert.eq(r.hw1.lines, "vlan 42\ndescription users\nquit")
	assert.eq(r.jn1.lines, "set vlans users vlan-id 42")
	assert.eq(#calls(), 0)
end)

test("a bad VLAN name is refused before any device is reached", function()
	fake("netdev.config", {})
	local _, err = run({ devices = "group:switches", vlan = 42, name = "users; reload" })
	assert.fails(err, "use up to 32 letters, digits, - and _")
	_, err = run({ devices = "group:switches", vlan = 42, name = "users\nexit\nreload" })
	assert.fails(err, "use up to 32 letters")
	_, err = run({ devices = "group:switches", vlan = 42, name = string.rep("v", 33) })
	assert.fails(err, "use up to 32 letters")
	_, err = run({ devices = "group:switches", vlan = 42, name = "" })
	assert.fails(err, "name")
	local rows = run({ devices = "sw1", vlan = 42, name = string.rep("v", 32) })
	assert.eq(rows[1].status, "done")
	assert.eq(#calls(), 1)
end)

test("params are checked before any device is reached", function()
	fake("netdev.config", {})
	local _, err = run({ devices = "group:switches", name = "users" })
	assert.fails(err, "vlan")
	_, err = run({ devices = "group:switches", vlan = 0, name = "users" })
	assert.fails(err, "vlan")
	_, err = run({ devices = "group:switches", vlan = 4095, name = "users" })
	assert.fails(err, "vlan")
	_, err = run({ devices = "group:switches", vlan = 42 })
	assert.fails(err, "name")
	_, err = run({ vlan = 42, name = "users" })
	assert.fails(err, "devices")
	_, err = run({ devices = "group:nosuch", vlan = 42, name = "users" })
	assert.fails(err, "matches no host")
	assert.eq(#calls(), 0)
end)
