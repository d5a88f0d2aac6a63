-- config-drift: one row per host with its status and hashes; drifted and missing files are
-- repaired only when asked (repair = true), with the recorded version; a host that could not be
-- checked is an error row; params checked first.

local A = string.rep("a", 64)
local B = string.rep("b", 64)

local function by_host(rows)
	local out = {}
	for _, r in ipairs(rows) do
		out[r.host] = r
	end
	return out
end

local function web_states()
	fake("config.check", { status = "in-sync", sha256 = A, expected_sha256 = A, version = 1, env = "prod" })
	fake("config.check", { host = "web2" }, { status = "drifted", drift = "the content differs", sha256 = B, expected_sha256 = A, version = 1, env = "prod" })
	fake("config.check", { host = "web3" }, { status = "missing", expected_sha256 = A, version = 1, env = "prod" })
	fake("config.check", { host = "web4" }, { status = "unknown" })
end

test("reports each host's status without touching a file", function()
	web_states()
	local rows, err = run({ item = "app", targets = "group:web" })
	assert.eq(err, nil)
	assert.eq(#rows, 4)
	local r = by_host(rows)
	assert.eq(r.web1.status, "in-sync")
	assert.eq(r.web1.version, 1)
	assert.eq(r.web1.expected_sha256, A)
	assert.eq(r.web1.actual_sha256, A)
	assert.eq(r.web2.status, "drifted")
	assert.eq(r.web2.expected_sha256, A)
	assert.eq(r.web2.actual_sha256, B)
	assert.eq(r.web3.status, "missing")
	assert.eq(r.web3.actual_sha256, nil)
	assert.eq(r.web4.status, "unknown")
	assert.contains(r.web4.error, "has not published app to web4")
	-- nothing was repaired, nothing was asked for a repair
	for _, row in ipairs(rows) do
		assert.falsy(row.repaired)
	end
	assert.not_called("config.publish")
	for _, host in ipairs({ "web1", "web2", "web3", "web4" }) do
		assert.called("config.check", { host = host, item = "app" }, 1)
	end
end)

test("repair = true puts the recorded version back where it drifted or is missing, and only there", function()
	web_states()
	fake("config.publish", { changed = true })
	local rows, err = run({ item = "app", targets = "group:web", repair = true })
	assert.eq(err, nil)
	local r = by_host(rows)
	assert.eq(r.web2.status, "drifted")
	assert.eq(r.web2.repaired, true)
	assert.eq(r.web3.status, "missing")
	assert.eq(r.web3.repaired, true)
	assert.falsy(r.web1.repaired)
	assert.falsy(r.web4.repaired)
	assert.called("config.publish", { host = "web2", item = "app", version = 1, env = "prod", action = "repair" }, 1)
	assert.called("config.publish", { host = "web3", item = "app", version = 1, env = "prod", action = "repair" }, 1)
	assert.not_called("config.publish", { host = "web1" })
	assert.not_called("config.publish", { host = "web4" })
end)

test("a repair that fails says so, and the other hosts are still repaired", function()
	web_states()
	fake("config.publish", { changed = true })
	fake("config.publish", { host = "web2" }, { failed_at = "validate", restored = "restored", output = "app: bad key" })
	local r = by_host(run({ item = "app", targets = "group:web", repair = true }))
	assert.eq(r.web2.status, "drifted")
	assert.eq(r.web2.repaired, false)
	assert.contains(r.web2.error, "validate failed on web2")
	assert.eq(r.web3.repaired, true)

	-- a repair that times out: not repaired, and the error says so
	fake("config.publish", { host = "web3" }, { error = "timeout" })
	r = by_host(run({ item = "app", targets = "web3", repair = true }))
	assert.eq(r.web3.status, "missing")
	assert.eq(r.web3.repaired, false)
	assert.contains(r.web3.error, "timeout")
end)

test("a repair uses the recorded environment, even when a staging host drifted", function()
	fake("config.check", { host = "stage1" }, { status = "drifted", drift = "mode is 0666, the item says 0640", version = 1, env = "staging" })
	fake("config.publish", { changed = true })
	local rows = run({ item = "app", targets = "stage1", repair = true })
	assert.eq(rows[1].repaired, true)
	assert.called("config.publish", { host = "stage1", env = "staging", action = "repair" }, 1)
end)

test("a host that could not be checked is an error row; the others are reported", function()
	web_states()
	fake("config.check", { host = "web2" }, { error = "timeout" })
	fake("config.publish", { changed = true })
	local rows, err = run({ item = "app", targets = "group:web", repair = true })
	assert.eq(err, nil)
	local r = by_host(rows)
	assert.eq(r.web2.status, "error")
	assert.contains(r.web2.error, "timeout")
	assert.falsy(r.web2.repaired)
	assert.not_called("config.publish", { host = "web2" })
	assert.eq(r.web3.repaired, true)
	assert.eq(r.web1.status, "in-sync")
end)

test("a dry run with repair plans the repair: nothing is published", function()
	web_states()
	fake("config.current", { content = "# edited by hand\n" })
	local rows, err = run({ item = "app", targets = "group:web", repair = true }, { dry_run = true })
	assert.eq(err, nil)
	local r = by_host(rows)
	assert.eq(r.web2.status, "drifted")
	assert.falsy(r.web2.repaired)
	assert.not_called("config.publish")
end)

test("params are checked before any host is reached", function()
	web_states()
	local _, err = run({ targets = "group:web" })
	assert.fails(err, "item")
	_, err = run({ item = "app" })
	assert.fails(err, "targets")
	_, err = run({ item = "app", targets = "group:web", repair = "yes" })
	assert.fails(err, "repair")
	_, err = run({ item = "app", targets = "group:nosuch" })
	assert.fails(err, "matches no host")
	assert.eq(#calls(), 0)
end)

test("an unknown item fails the run", function()
	web_states()
	local _, err = run({ item = "nginx", targets = "group:web" })
	assert.fails(err, "no config item `nginx`")
	assert.eq(#calls(), 0)
end)
