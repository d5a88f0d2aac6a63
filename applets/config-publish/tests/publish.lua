-- config-publish: canary first, then batches; stop after `stop_after` failures; the status of
-- each row; the env tag guard; a dry run's diff; params checked before any host is reached.

local function targets_of(name)
	local out = {}
	for _, c in ipairs(calls(name)) do
		table.insert(out, c.target)
	end
	return out
end

local function by_host(rows)
	local out = {}
	for _, r in ipairs(rows) do
		out[r.host] = r
	end
	return out
end

test("publishes the newest version to every host, the canary alone first", function()
	fake("config.publish", { changed = true })
	local rows, err = run({ item = "app", targets = "group:web" })
	assert.eq(err, nil)
	assert.eq(#rows, 4)
	for i, host in ipairs({ "web1", "web2", "web3", "web4" }) do
		assert.eq(rows[i].host, host)
		assert.eq(rows[i].status, "published")
		assert.eq(rows[i].action, "publish")
		assert.eq(rows[i].version, 1)
		assert.eq(rows[i].env, "prod")
		assert.eq(rows[i].failed_at, nil)
		assert.eq(type(rows[i].seconds), "number")
	end
	-- the recorded version and the host's env tag, the item's rendered path
	for _, host in ipairs({ "web1", "web2", "web3", "web4" }) do
		assert.called("config.publish", { host = host, item = "app", version = 1, env = "prod", path = "/etc/app/app.conf", action = "publish" }, 1)
	end
	assert.eq(calls("config.publish")[1].target, "web1")
	assert.not_called("config.publish", { host = "stage1" })
end)

test("a host that already had the file is unchanged", function()
	fake("config.publish", { changed = true })
	fake("config.publish", { host = "web3" }, { changed = false })
	local rows = by_host(run({ item = "app", targets = "group:web" }))
	assert.eq(rows.web1.status, "published")
	assert.eq(rows.web3.status, "unchanged")
	assert.eq(rows.web4.status, "published")
end)

test("a failing canary skips every other host", function()
	fake("config.publish", { changed = true })
	fake("config.publish", { host = "web1" }, { failed_at = "validate", restored = "restored", output = "app: bad key 'workers'" })
	local rows, err = run({ item = "app", targets = "group:web" })
	assert.eq(err, nil)
	assert.eq(rows[1].host, "web1")
	assert.eq(rows[1].status, "failed")
	assert.eq(rows[1].failed_at, "validate")
	assert.eq(rows[1].output, "app: bad key 'workers'")
	assert.contains(rows[1].error, "validate failed on web1")
	for i = 2, 4 do
		assert.eq(rows[i].status, "skipped")
	end
	assert.eq(targets_of("config.publish"), { "web1" })
end)

test("after the canary, a failure stops the next batches (stop_after = 1 by default)", function()
	fake("config.publish", { changed = true })
	fake("config.publish", { host = "web2" }, {
		failed_at = "health", restored = "reloaded", output = "curl: (7) Connection refused",
		before_sha256 = "9f2c1a0e5b7d4c3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a",
	})
	local rows = run({ item = "app", targets = "group:web", batch = 1 })
	assert.eq(rows[1].status, "published")
	assert.eq(rows[2].status, "failed")
	assert.eq(rows[2].failed_at, "health")
	assert.eq(rows[2].restored, "reloaded")
	assert.contains(rows[2].error, "the previous file was put back")
	assert.eq(rows[3].status, "skipped")
	assert.eq(rows[4].status, "skipped")
	assert.eq(targets_of("config.publish"), { "web1", "web2" })
end)

test("stop_after lets that many hosts fail before stopping", function()
	fake("config.publish", { changed = true })
	fake("config.publish", { host = "web2" }, { failed_at = "reload", restored = "reloaded" })
	fake("config.publish", { host = "web3" }, { failed_at = "reload", restored = "reloaded" })
	local rows = run({ item = "app", targets = "group:web", batch = 1, stop_after = 2 })
	assert.eq({ rows[1].status, rows[2].status, rows[3].status, rows[4].status }, { "published", "failed", "failed", "skipped" })
	assert.not_called("config.publish", { host = "web4" })

	-- with room for both failures, every host is tried
	rows = run({ item = "app", targets = "group:web", batch = 1, stop_after = 3 })
	assert.eq({ rows[1].status, rows[2].status, rows[3].status, rows[4].status }, { "published", "failed", "failed", "published" })
	assert.called("config.publish", { host = "web4" }, 1)
end)

test("a host that times out is failed, and what it runs is unknown", function()
	fake("config.publish", { changed = true })
	fake("config.publish", { host = "web3" }, { error = "timeout" })
	local rows = run({ item = "app", targets = "group:web", batch = 1, stop_after = 5 })
	assert.eq(rows[3].status, "failed")
	assert.contains(rows[3].error, "timeout")
	assert.contains(rows[3].error, "unknown")
	assert.eq(rows[4].status, "published")
end)

test("a host tagged for another environment is refused, nothing sent to it", function()
	fake("config.publish", { changed = true })
	-- stage1 (staging) is the canary and goes well; the prod hosts are refused
	local r = by_host(run({ item = "app", targets = "stage1,web1,web2", env = "staging", stop_after = 5 }))
	assert.eq(r.stage1.status, "published")
	assert.eq(r.web1.status, "failed")
	assert.contains(r.web1.error, "web1 is tagged env=prod, and this publish is for env staging")
	assert.eq(r.web2.status, "failed")
	assert.not_called("config.publish", { host = "web*" })
	assert.called("config.publish", { host = "stage1", env = "staging" }, 1)
end)

test("a refused canary skips the rest too", function()
	fake("config.publish", { changed = true })
	-- by cmdb order stage1 comes first: it is the canary, and prod's file does not go there
	local rows = run({ item = "app", targets = "stage1,web1,web2", env = "prod" })
	assert.eq(rows[1].host, "stage1")
	assert.eq(rows[1].status, "failed")
	assert.contains(rows[1].error, "stage1 is tagged env=staging")
	assert.eq({ rows[2].status, rows[3].status }, { "skipped", "skipped" })
	assert.eq(#calls(), 0)
end)

test("without env, each host is rendered for its own env tag; an untagged host needs env", function()
	fake("config.publish", { changed = true })
	local r = by_host(run({ item = "app", targets = "stage1,web1" }))
	assert.eq(r.stage1.env, "staging")
	assert.eq(r.web1.env, "prod")
	assert.called("config.publish", { host = "stage1", env = "staging" }, 1)
	assert.called("config.publish", { host = "web1", env = "prod" }, 1)

	local rows = run({ item = "app", targets = "lab1" })
	assert.eq(rows[1].status, "failed")
	assert.contains(rows[1].error, "no `env` tag")
	assert.not_called("config.publish", { host = "lab1" })

	-- given env, the untagged host takes it
	rows = run({ item = "app", targets = "lab1", env = "dev" })
	assert.eq(rows[1].status, "published")
	assert.called("config.publish", { host = "lab1", env = "dev" }, 1)
end)

test("a dry run publishes nothing and shows each host's diff", function()
	fake("config.current", { content = "# app for web1 (prod)\nworkers = 4\n" })
	fake("config.current", { host = "web2" }, { content = "# app for web2 (prod)\nworkers = 2\n" })
	local rows, err = run({ item = "app", targets = "web1,web2" }, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(rows[1].status, "planned")
	assert.eq(rows[2].status, "planned")
	assert.contains(rows[2].diff, "-workers = 2")
	assert.contains(rows[2].diff, "+workers = 4")
	assert.not_called("config.publish")
	assert.called("config.current", { host = "web2", item = "app", version = 1, env = "prod" }, 1)
end)

test("a dry run renders per environment; a new file and a symbolic link are shown as such", function()
	fake("config.current", {})
	fake("config.current", { host = "web1" }, { link = true })
	local r = by_host(run({ item = "app", targets = "stage1,web1", stop_after = 5 }, { dry_run = true }))
	assert.eq(r.stage1.status, "planned")
	assert.contains(r.stage1.diff, "+# app for stage1 (staging)")
	assert.contains(r.stage1.diff, "+workers = 1")
	assert.eq(r.web1.status, "failed")
	assert.contains(r.web1.error, "symbolic link")
	assert.not_called("config.publish")
end)

test("a version the item does not have fails the run", function()
	fake("config.publish", { changed = true })
	local _, err = run({ item = "app", targets = "group:web", version = 2 })
	assert.fails(err, "has no version 2")
	assert.not_called("config.publish")
end)

test("an unknown item fails the run", function()
	fake("config.publish", { changed = true })
	local _, err = run({ item = "nginx", targets = "group:web" })
	assert.fails(err, "no config item `nginx`")
	assert.not_called("config.publish")
end)

test("params are checked before any host is reached", function()
	fake("config.publish", { changed = true })
	local _, err = run({ targets = "group:web" })
	assert.fails(err, "item")
	_, err = run({ item = "app" })
	assert.fails(err, "targets")
	_, err = run({ item = "app", targets = "group:web", batch = 0 })
	assert.fails(err, "batch")
	_, err = run({ item = "app", targets = "group:web", stop_after = 0 })
	assert.fails(err, "stop_after")
	_, err = run({ item = "app", targets = "group:web", version = 0 })
	assert.fails(err, "version")
	_, err = run({ item = "app", targets = "group:nosuch" })
	assert.fails(err, "matches no host")
	assert.eq(#calls(), 0)
end)
