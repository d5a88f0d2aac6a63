-- switch-backup: first backups, changed and unchanged configurations (with the diff of what
-- changed), volatile lines, devices that fail, a dry run and params.

local SW1_V1 = "hostname sw1\ninterface Gi0/1\n description uplink\n!\nvlan 10\n name users\n"
local SW1_V2 = "hostname sw1\ninterface Gi0/1\n description uplink\n!\nvlan 10\n name users\nvlan 20\n name voice\n"
local SW2 = "hostname sw2\ninterface Gi0/1\n shutdown\n"

local function by_host(rows)
	local out = {}
	for _, r in ipairs(rows) do
		out[r.host] = r
	end
	return out
end

test("the first backup of each device is version 1, with no diff", function()
	fake("netdev.backup", { target = "sw1" }, { config = SW1_V1 })
	fake("netdev.backup", { target = "sw2" }, { config = SW2 })
	local rows, err = run({ devices = "group:switches" })
	assert.eq(err, nil)
	assert.eq(#rows, 2)
	local r = by_host(rows)
	assert.eq(r.sw1.status, "first backup")
	assert.eq(r.sw1.version, 1)
	assert.eq(r.sw1.profile, "cisco_ios")
	assert.eq(r.sw1.bytes, #SW1_V1)
	assert.eq(r.sw1.diff, nil)
	assert.eq(r.sw1.error, nil)
	assert.eq(type(r.sw1.seconds), "number")
	assert.eq(r.sw2.status, "first backup")
	-- the profile's backup command, once per device
	assert.called("netdev.backup", { target = "sw1", command = "show running-config" }, 1)
	assert.called("netdev.backup", { target = "sw2", command = "show running-config" }, 1)
end)

test("a changed configuration is a new version with the diff; an unchanged one is not", function()
	fake("netdev.backup", { target = "sw1" }, { config = SW1_V1 })
	fake("netdev.backup", { target = "sw2" }, { config = SW2 })
	run({ devices = "group:switches" })

	fake("netdev.backup", { target = "sw1" }, { config = SW1_V2 })
	local r = by_host(run({ devices = "group:switches" }))
	assert.eq(r.sw1.status, "changed")
	assert.eq(r.sw1.version, 2)
	assert.contains(r.sw1.diff, "+vlan 20")
	assert.contains(r.sw1.diff, "+ name voice")
	assert.falsy(string.find(r.sw1.diff, "-vlan 10", 1, true))
	assert.eq(r.sw2.status, "unchanged")
	assert.eq(r.sw2.version, 1)
	assert.eq(r.sw2.diff, nil)

	-- and a line taken away
	fake("netdev.backup", { target = "sw1" }, { config = SW1_V1 })
	r = by_host(run({ devices = "sw1" }))
	assert.eq(r.sw1.status, "changed")
	assert.eq(r.sw1.version, 3)
	assert.contains(r.sw1.diff, "-vlan 20")
end)

test("diff = false leaves the diff out, the new version is still stored", function()
	fake("netdev.backup", { target = "sw1" }, { config = SW1_V1 })
	run({ devices = "sw1" })
	fake("netdev.backup", { target = "sw1" }, { config = SW1_V2 })
	local rows = run({ devices = "sw1", diff = false })
	assert.eq(rows[1].status, "changed")
	assert.eq(rows[1].version, 2)
	assert.eq(rows[1].diff, nil)
end)

test("volatile lines (the build banner) do not make a new version", function()
	fake("netdev.backup", { target = "sw1" }, { config = "Building configuration...\n\nCurrent configuration : 1234 bytes\n" .. SW1_V1 })
	run({ devices = "sw1" })
	fake("netdev.backup", { target = "sw1" }, { config = "Building configuration...\n\nCurrent configuration : 1301 bytes\n" .. SW1_V1 })
	local rows = run({ devices = "sw1" })
	assert.eq(rows[1].status, "unchanged")
	assert.eq(rows[1].version, 1)
end)

test("each vendor's profile gives its own backup command", function()
	fake("netdev.backup", { config = "sysname x\n" })
	local r = by_host(run({ devices = "fw1,core1" }))
	assert.eq(r.fw1.profile, "huawei_vrp")
	assert.eq(r.core1.profile, "juniper_junos")
	assert.eq(r.fw1.status, "first backup")
	assert.called("netdev.backup", { target = "fw1", command = "display current-configuration" }, 1)
	assert.not_called("netdev.backup", { target = "core1", command = "show running-config" })
end)

test("a device that times out is failed; the others are still backed up", function()
	fake("netdev.backup", { config = SW2 })
	fake("netdev.backup", { target = "sw1" }, { error = "timeout" })
	local rows, err = run({ devices = "group:switches" })
	assert.eq(err, nil)
	local r = by_host(rows)
	assert.eq(r.sw1.status, "failed")
	assert.eq(r.sw1.error, "timeout")
	assert.eq(r.sw1.version, nil)
	assert.eq(r.sw1.diff, nil)
	assert.eq(r.sw2.status, "first backup")
end)

test("a device without a platform tag fails, the others are backed up", function()
	fake("netdev.backup", { config = SW2 })
	local rows, err = run({ devices = "sw2,odd1" })
	assert.eq(err, nil)
	local r = by_host(rows)
	assert.eq(r.odd1.status, "failed")
	assert.contains(r.odd1.error, "platform")
	assert.not_called("netdev.backup", { target = "odd1" })
	assert.eq(r.sw2.status, "first backup")
end)

test("a dry run still backs up: reading is not a change", function()
	fake("netdev.backup", { config = SW2 })
	local rows, err = run({ devices = "sw2" }, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(rows[1].status, "first backup")
	assert.called("netdev.backup", { target = "sw2" }, 1)
end)

test("params are checked before any device is reached", function()
	fake("netdev.backup", { config = SW2 })
	local _, err = run({})
	assert.fails(err, "devices")
	_, err = run({ devices = "group:switches", concurrency = 0 })
	assert.fails(err, "concurrency")
	_, err = run({ devices = "group:switches", concurrency = 257 })
	assert.fails(err, "concurrency")
	_, err = run({ devices = "group:switches", diff = "yes" })
	assert.fails(err, "diff")
	_, err = run({ devices = "group:nosuch" })
	assert.fails(err, "matches no host")
	assert.eq(#calls(), 0)
end)
