-- change-checklist: the steps of each kind of change, canary and rollback phases, approvers,
-- the window, and the params it refuses. It touches no host.

local START = "2024-05-01T22:00:00+02:00"

local function actions(list, phase)
	local out = {}
	for _, s in ipairs(list) do
		if phase == nil or s.phase == phase then
			table.insert(out, s.action)
		end
	end
	return out
end

test("a deploy: prepare, canary, rollout, verify, rollback, close", function()
	local list, err = run({ service = "redis-cache", change = "deploy", hosts = "group:cache & tag:env=prod", start = START })
	assert.eq(err, nil)
	assert.eq(list, {
		{ ["#"] = 1, phase = "prepare", owner = "operator",
			action = "announce deploy redis-cache on group:cache & tag:env=prod, 2024-05-01T20:00:00.000Z to 2024-05-01T21:00:00.000Z" },
		{ ["#"] = 2, phase = "prepare", owner = "operator", action = "silence alerts for redis-cache during the window" },
		{ ["#"] = 3, phase = "canary", owner = "operator", action = "deploy the new release of redis-cache (first 1 host)" },
		{ ["#"] = 4, phase = "canary", owner = "operator", action = "run smoke tests of redis-cache (first 1 host)" },
		{ ["#"] = 5, phase = "canary", owner = "operator", action = "check health of the canary hosts; stop here if anything is red" },
		{ ["#"] = 6, phase = "rollout", owner = "operator", action = "deploy the new release of redis-cache (remaining hosts, in batches)" },
		{ ["#"] = 7, phase = "rollout", owner = "operator", action = "run smoke tests of redis-cache (remaining hosts, in batches)" },
		{ ["#"] = 8, phase = "verify", owner = "operator", action = "check redis-cache health and error rate against the baseline" },
		{ ["#"] = 9, phase = "rollback", owner = "operator", action = "redeploy the previous release of redis-cache" },
		{ ["#"] = 10, phase = "close", owner = "operator", action = "lift the alert silence and post the outcome" },
	})
	assert.eq(#calls(), 0, "it calls no module")
end)

test("the window length sets the end of the announced window", function()
	local list = run({ service = "api", change = "config", hosts = "cache1", start = "2024-12-31T23:30:00Z", window_minutes = 90 })
	assert.eq(list[1].action, "announce config api on cache1, 2024-12-31T23:30:00.000Z to 2025-01-01T01:00:00.000Z")
end)

test("each kind of change has its own steps and rollback", function()
	local list = run({ service = "api", change = "patch", hosts = "group:cache", start = START, canary = 2 })
	assert.eq(actions(list, "canary"), {
		"drain traffic from api (first 2 hosts)",
		"install OS patches (first 2 hosts)",
		"reboot if required (first 2 hosts)",
		"confirm api came back (first 2 hosts)",
		"check health of the canary hosts; stop here if anything is red",
	})
	assert.eq(actions(list, "rollback"), { "boot the previous kernel", "downgrade the patched packages" })

	list = run({ service = "nginx", change = "restart", hosts = "group:cache", start = START })
	assert.eq(actions(list, "rollout"), {
		"drain traffic from nginx (remaining hosts, in batches)",
		"restart nginx (remaining hosts, in batches)",
		"put nginx back into the pool (remaining hosts, in batches)",
	})
	assert.eq(actions(list, "rollback"), { "if nginx does not come back, fail over to the standby" })

	list = run({ service = "nginx", change = "config", hosts = "group:cache", start = START })
	assert.eq(actions(list, "rollout"), {
		"back up the current nginx config (remaining hosts, in batches)",
		"apply the new nginx config and reload (remaining hosts, in batches)",
	})
end)

test("a reboot needs an approver, who owns the sign-off step", function()
	local _, err = run({ service = "db", change = "reboot", hosts = "group:cache", start = START })
	assert.fails(err, "a reboot needs at least one approver")
	_, err = run({ service = "db", change = "reboot", hosts = "group:cache", start = START, approvers = json.array() })
	assert.fails(err, "a reboot needs at least one approver")

	local list, err2 = run({ service = "db", change = "reboot", hosts = "group:cache", start = START, approvers = { "alice", "bob" } })
	assert.eq(err2, nil)
	assert.eq(list[2], { ["#"] = 2, phase = "prepare", action = "sign-off from alice, bob", owner = "alice" })
	assert.eq(actions(list, "rollout"), {
		"drain traffic from db (remaining hosts, in batches)",
		"reboot the host (remaining hosts, in batches)",
		"confirm db came back (remaining hosts, in batches)",
	})
	assert.eq(actions(list, "rollback"), { "if the host does not come back, power-cycle it over the BMC" })
end)

test("approvers are optional for other changes", function()
	local list = run({ service = "api", change = "deploy", hosts = "group:cache", start = START, approvers = { "carol" } })
	assert.eq(list[2].owner, "carol")
	list = run({ service = "api", change = "deploy", hosts = "group:cache", start = START })
	for _, s in ipairs(list) do
		assert.eq(s.owner, "operator")
	end
end)

test("no canary hosts: no canary phase", function()
	local list = run({ service = "api", change = "deploy", hosts = "group:cache", start = START, canary = 0 })
	assert.eq(#actions(list, "canary"), 0)
	assert.eq(#actions(list, "rollout"), 2)
	-- the steps are numbered without gaps
	for i, s in ipairs(list) do
		assert.eq(s["#"], i)
	end
end)

test("rollback = false leaves the rollback phase out", function()
	local list = run({ service = "api", change = "patch", hosts = "group:cache", start = START, rollback = false })
	assert.eq(#actions(list, "rollback"), 0)
	assert.eq(list[#list].phase, "close")
	assert.eq(list[#list]["#"], #list)
end)

test("without a start the window starts now", function()
	local list, err = run({ service = "api", change = "deploy", hosts = "group:cache" })
	assert.eq(err, nil)
	assert.match(list[1].action, "^announce deploy api on group:cache, %d%d%d%d%-%d%d%-%d%dT[%d:.]+Z to %d%d%d%d%-%d%d%-%d%dT[%d:.]+Z$")
end)

test("a dry run gives the same checklist", function()
	local p = { service = "api", change = "deploy", hosts = "group:cache", start = START }
	local real = run(p)
	local dry, err = run(p, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(dry, real)
	assert.eq(#calls(), 0)
end)

test("bad params are refused", function()
	local base = { service = "api", change = "deploy", hosts = "group:cache", start = START }
	local function with(k, v)
		local p = table.clone(base)
		p[k] = v
		return p
	end
	local _, err = run(with("change", "upgrade"))
	assert.fails(err, "change")
	_, err = run(with("window_minutes", 4))
	assert.fails(err, "window_minutes")
	_, err = run(with("window_minutes", 481))
	assert.fails(err, "window_minutes")
	_, err = run(with("canary", 51))
	assert.fails(err, "canary")
	_, err = run(with("hosts", "group:db"))
	assert.fails(err, "matches no host")
	_, err = run(with("service", nil))
	assert.fails(err, "service")
	_, err = run(with("start", "tomorrow 10:00"))
	assert.fails(err, "is not an RFC 3339 time")
end)
