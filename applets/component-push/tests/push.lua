-- component-push: canary first, then batches; hosts already at the version left alone; a failing
-- host rolled back to the version its cmdb tag names (or failed without one); stop_after; the dry
-- run's plan; a missing package; names that are refused before anything runs.
--
-- tests/hosts.csv: web1, web2, web4, web6 run app 1.0, web3 runs 2.0, web5 and new1 have none,
-- wrk1 runs 0.9 (whose package is gone from the store), odd1's tag says "1.0 rc".

local NEW_SHA = string.rep("a1", 32)
local OLD_SHA = string.rep("b2", 32)
local INSTALL = "/opt/app/install.sh {path} {version}"
local HEALTH = "/opt/app/health.sh {component} {version}"
local NEW_PATH = "/opt/opslet-components/app/2.0/app-2.0.tar.gz"
local OLD_PATH = "/opt/opslet-components/app/1.0/app-1.0.tar.gz"
local INSTALL_NEW = "/opt/app/install.sh '" .. NEW_PATH .. "' '2.0'"
local INSTALL_OLD = "/opt/app/install.sh '" .. OLD_PATH .. "' '1.0'"
local HEALTH_NEW = "/opt/app/health.sh 'app' '2.0'"
local HEALTH_OLD = "/opt/app/health.sh 'app' '1.0'"

local function params(extra)
	local p = { targets = "group:web", component = "app", version = "2.0", install = INSTALL, health = HEALTH }
	for k, v in pairs(extra or {}) do
		p[k] = v
	end
	return p
end

-- The store has app 1.0 and 2.0; 0.9 is gone.
local function store()
	fake("s3.head", { target = "releases/app/2.0/app-2.0.tar.gz" }, { bucket = "releases", key = "app/2.0/app-2.0.tar.gz", size = 2048, sha256 = NEW_SHA })
	fake("s3.head", { target = "releases/app/1.0/app-1.0.tar.gz" }, { bucket = "releases", key = "app/1.0/app-1.0.tar.gz", size = 1024, sha256 = OLD_SHA })
	fake("s3.head", { target = "releases/app/0.9/app-0.9.tar.gz" }, json.null)
end

-- Every host takes every step; tests override one host's step after this.
local function healthy()
	store()
	fake("ssh.run", { command = "mkdir -p -- *" }, { exit_code = 0 })
	fake("ssh.put", { object = { key = "app/2.0/app-2.0.tar.gz" } }, { bytes = 2048, sha256 = NEW_SHA })
	fake("ssh.put", { object = { key = "app/1.0/app-1.0.tar.gz" } }, { bytes = 1024, sha256 = OLD_SHA })
	fake("ssh.run", { command = "/opt/app/install.sh *" }, { stdout = "installed\n" })
	fake("ssh.run", { command = "/opt/app/health.sh *" }, { stdout = "ok\n" })
end

local function by_host(rows)
	local out = {}
	for _, r in ipairs(rows) do
		out[r.host] = r
	end
	return out
end

local function statuses(rows)
	local out = {}
	for _, r in ipairs(rows) do
		out[r.host] = r.status
	end
	return out
end

-- The ssh steps made, in order: "STEP HOSTS", one per ssh call (the hosts of one call, which run
-- at once, sorted and joined with +).
local function steps()
	local out, last, hosts = {}, nil, {}
	local function flush()
		if last then
			table.sort(hosts)
			table.insert(out, last .. " " .. table.concat(hosts, "+"))
		end
	end
	for _, c in ipairs(calls()) do
		if string.sub(c.call, 1, 4) == "ssh." then
			local cmd = c.args.command or ""
			local what = if c.call == "ssh.put" then "put " .. c.args.object.key
				elseif string.find(cmd, "mkdir", 1, true) then "mkdir"
				elseif string.find(cmd, "install", 1, true) then "install"
				else "health"
			if what ~= last then
				flush()
				last, hosts = what, {}
			end
			table.insert(hosts, c.target)
		end
	end
	flush()
	return out
end

test("deploys to the canary alone, then in batches; hosts at the version are left alone", function()
	healthy()
	local rows, err = run(params({ batch = 2 }))
	assert.eq(err, nil)
	assert.eq(rows, {
		{ host = "web1", from = "1.0", to = "2.0", status = "updated", sha256 = NEW_SHA },
		{ host = "web2", from = "1.0", to = "2.0", status = "updated", sha256 = NEW_SHA },
		{ host = "web3", from = "2.0", to = "2.0", status = "unchanged" },
		{ host = "web4", from = "1.0", to = "2.0", status = "updated", sha256 = NEW_SHA },
		{ host = "web5", to = "2.0", status = "updated", sha256 = NEW_SHA },
		{ host = "web6", from = "1.0", to = "2.0", status = "updated", sha256 = NEW_SHA },
	})
	-- canary web1 alone, then web2+web4, then web5+web6; each step of a group after the last
	assert.eq(steps(), {
		"mkdir web1", "put app/2.0/app-2.0.tar.gz web1", "install web1", "health web1",
		"mkdir web2+web4", "put app/2.0/app-2.0.tar.gz web2+web4", "install web2+web4", "health web2+web4",
		"mkdir web5+web6", "put app/2.0/app-2.0.tar.gz web5+web6", "install web5+web6", "health web5+web6",
	})
	-- the exact calls: the directory, the object with its recorded checksum, quoted placeholders
	assert.called("ssh.run", { host = "web1", command = "mkdir -p -- '/opt/opslet-components/app/2.0'" }, 1)
	assert.called("ssh.put", {
		host = "web1", path = NEW_PATH, mode = "0644", sha256 = NEW_SHA,
		object = { bucket = "releases", key = "app/2.0/app-2.0.tar.gz", size = 2048, sha256 = NEW_SHA },
	}, 1)
	assert.called("ssh.run", { host = "web1", command = INSTALL_NEW }, 1)
	assert.called("ssh.run", { host = "web1", command = HEALTH_NEW }, 1)
	assert.not_called("ssh.run", { host = "web3" })
	assert.not_called("ssh.put", { host = "web3" })
	assert.not_called("ssh.run", { host = "wrk1" })
	assert.called("s3.head", { target = "releases/app/2.0/app-2.0.tar.gz" }, 1)
	assert.not_called("s3.head", { target = "releases/app/1.0/*" })

	-- the cmdb tags now say 2.0: a second run touches nothing
	rows = run(params({ batch = 2 }))
	for _, r in ipairs(rows) do
		assert.eq(r.status, "unchanged", r.host)
		assert.eq(r.from, "2.0", r.host)
	end
	assert.eq(#calls("ssh.put"), 5, "no put in the second run")
end)

test("hosts already at the version are unchanged and never reached", function()
	healthy()
	local rows, err = run(params({ targets = "web3" }))
	assert.eq(err, nil)
	assert.eq(rows, { { host = "web3", from = "2.0", to = "2.0", status = "unchanged" } })
	assert.not_called("ssh.run")
	assert.not_called("ssh.put")
	-- the package is still looked up: a version the store lacks fails even when nothing is to do
	assert.called("s3.head", { target = "releases/app/2.0/app-2.0.tar.gz" }, 1)
end)

test("a failing health check on the canary rolls it back and skips every other host", function()
	healthy()
	fake("ssh.run", { host = "web1", command = HEALTH_NEW }, { exit_code = 1, stderr = "app: not listening on :8080\n" })
	local rows, err = run(params({ batch = 2, stop_after = 3 }))
	assert.eq(err, nil)
	assert.eq(rows[1], {
		host = "web1", from = "1.0", to = "2.0", status = "rolled_back", sha256 = NEW_SHA,
		error = "health exited 1: app: not listening on :8080",
	})
	local s = statuses(rows)
	assert.eq(s, { web1 = "rolled_back", web2 = "skipped", web3 = "unchanged", web4 = "skipped", web5 = "skipped", web6 = "skipped" })
	for _, h in ipairs({ "web2", "web4", "web5", "web6" }) do
		assert.eq(by_host(rows)[h].error, "not started: the canary web1 failed")
	end
	-- 1.0 went back on the canary: looked up, put, installed and checked
	assert.eq(steps(), {
		"mkdir web1", "put app/2.0/app-2.0.tar.gz web1", "install web1", "health web1",
		"mkdir web1", "put app/1.0/app-1.0.tar.gz web1", "install web1", "health web1",
	})
	assert.called("s3.head", { target = "releases/app/1.0/app-1.0.tar.gz" }, 1)
	assert.called("ssh.put", { host = "web1", path = OLD_PATH, sha256 = OLD_SHA }, 1)
	assert.called("ssh.run", { host = "web1", command = INSTALL_OLD }, 1)
	assert.called("ssh.run", { host = "web1", command = HEALTH_OLD }, 1)

	-- its tag still says 1.0: the plan of another run has it go from 1.0 again
	local plan = run(params({ targets = "web1" }), { dry_run = true })
	assert.eq(plan, { { host = "web1", from = "1.0", to = "2.0", status = "planned" } })
end)

test("a host with no previous version is failed, not rolled back", function()
	healthy()
	fake("ssh.run", { host = "new1", command = "/opt/app/install.sh *" }, { exit_code = 2, stdout = "unpacking...\n", stderr = "tar: Error is not recoverable\n" })
	local rows, err = run(params({ targets = "group:fresh" }))
	assert.eq(err, nil)
	assert.eq(rows, {
		{ host = "new1", to = "2.0", status = "failed", sha256 = NEW_SHA, error = "install exited 2: tar: Error is not recoverable" },
	})
	assert.eq(#calls("ssh.put"), 1, "nothing is pushed back")
	assert.not_called("ssh.run", { command = "/opt/app/health.sh *" })
	-- and its tag stays unset: the next run tries it again
	local plan = run(params({ targets = "new1" }), { dry_run = true })
	assert.eq(plan[1].status, "planned")
	assert.eq(plan[1].from, nil)
end)

test("an install failing on a later batch rolls that host back and stops the next batches", function()
	healthy()
	fake("ssh.run", { host = "web4", command = INSTALL_NEW }, { exit_code = 1, stderr = "dpkg: error: disk full\n" })
	local rows, err = run(params({ batch = 2 }))
	assert.eq(err, nil)
	assert.eq(statuses(rows), { web1 = "updated", web2 = "updated", web3 = "unchanged", web4 = "rolled_back", web5 = "skipped", web6 = "skipped" })
	local r = by_host(rows)
	assert.eq(r.web4.error, "install exited 1: dpkg: error: disk full")
	assert.eq(r.web4.sha256, NEW_SHA)
	assert.eq(r.web5.error, "not started: 1 host(s) failed (stop_after = 1)")
	-- the failing host's batch mate finished, the health check ran only where the install went well
	assert.called("ssh.run", { host = "web2", command = HEALTH_NEW }, 1)
	assert.not_called("ssh.run", { host = "web4", command = HEALTH_NEW })
	assert.called("ssh.put", { host = "web4", path = OLD_PATH }, 1)
	assert.called("ssh.run", { host = "web4", command = HEALTH_OLD }, 1)
	assert.not_called("ssh.run", { host = "web5" })
	assert.not_called("ssh.put", { host = "web6" })
end)

test("below stop_after failures every batch still goes", function()
	healthy()
	fake("ssh.run", { host = "web4", command = INSTALL_NEW }, { exit_code = 1, stderr = "dpkg: error: disk full\n" })
	fake("ssh.run", { host = "web5", command = HEALTH_NEW }, { error = "timed out after 5m" })
	local rows = run(params({ targets = "web2,web4,web5,web6", batch = 1, stop_after = 3 }))
	assert.eq(statuses(rows), { web2 = "updated", web4 = "rolled_back", web5 = "failed", web6 = "updated" })
	assert.eq(by_host(rows).web5.error, "health: timed out after 5m")
end)

test("once stop_after hosts failed, the next batches are skipped", function()
	healthy()
	fake("ssh.run", { host = "web4", command = INSTALL_NEW }, { exit_code = 1, stderr = "dpkg: error: disk full\n" })
	fake("ssh.run", { host = "web5", command = HEALTH_NEW }, { error = "timed out after 5m" })
	local rows = run(params({ targets = "web1,web4,web5,web6", batch = 1, stop_after = 2 }))
	assert.eq(statuses(rows), { web1 = "updated", web4 = "rolled_back", web5 = "failed", web6 = "skipped" })
	assert.eq(by_host(rows).web6.error, "not started: 2 host(s) failed (stop_after = 2)")
	assert.not_called("ssh.run", { host = "web6" })
end)

test("a rollback that fails, or has no package to go back to, is rollback_failed", function()
	healthy()
	fake("ssh.run", { host = "web2", command = "/opt/app/install.sh *" }, { exit_code = 1, stderr = "install: no space left on device\n" })
	fake("ssh.run", { host = "wrk1", command = HEALTH_NEW }, { exit_code = 3, stdout = "degraded\n" })
	local rows, err = run(params({ targets = "web1,web2,wrk1", batch = 5, stop_after = 5 }))
	assert.eq(err, nil)
	local r = by_host(rows)
	assert.eq(r.web1.status, "updated")
	assert.eq(r.web2.status, "rollback_failed")
	assert.eq(r.web2.error, "install exited 1: install: no space left on device; rollback to 1.0 failed: install exited 1: install: no space left on device")
	assert.eq(r.wrk1.status, "rollback_failed")
	assert.eq(r.wrk1.error, "health exited 3: degraded; rollback to 0.9 failed: s3.object: releases/app/0.9/app-0.9.tar.gz: NoSuchKey: there is no such object")
	assert.not_called("ssh.put", { host = "wrk1", path = "*/0.9/*" })
end)

test("a cmdb tag that names no valid version cannot be rolled back to", function()
	healthy()
	fake("ssh.run", { host = "odd1", command = HEALTH_NEW }, { exit_code = 1 })
	local rows = run(params({ targets = "odd1" }))
	assert.eq(rows, { {
		host = "odd1", from = "1.0 rc", to = "2.0", status = "rollback_failed", sha256 = NEW_SHA,
		error = 'health exited 1; rollback to 1.0 rc failed: the cmdb tag component.app names version "1.0 rc", which is not a valid version',
	} })
	assert.called("ssh.put", {}, 1)
end)

test("a host that cannot take the package is rolled back; a checksum the store did not record fails it", function()
	healthy()
	fake("ssh.put", { host = "web2", object = { key = "app/2.0/*" } }, { error = "sha256sum: the file hashes to 00ff..., 2048 bytes were sent hashing to a1a1..." })
	fake("ssh.put", { host = "web4", object = { key = "app/2.0/*" } }, { bytes = 2048, sha256 = string.rep("cd", 32) })
	local rows = run(params({ targets = "web1,web2,web4", batch = 5, stop_after = 5 }))
	local r = by_host(rows)
	assert.eq(r.web1.status, "updated")
	assert.eq(r.web2.status, "rolled_back")
	assert.eq(r.web2.error, "put " .. NEW_PATH .. ": sha256sum: the file hashes to 00ff..., 2048 bytes were sent hashing to a1a1...")
	assert.eq(r.web2.sha256, nil)
	assert.eq(r.web4.status, "rolled_back")
	assert.eq(r.web4.error, "put " .. NEW_PATH .. ": the host has SHA-256 " .. string.rep("cd", 32) .. ", the store recorded " .. NEW_SHA)
	assert.not_called("ssh.run", { host = "web2", command = INSTALL_NEW })
	assert.not_called("ssh.run", { host = "web4", command = INSTALL_NEW })
end)

test("a dry run changes nothing, still looks the package up, and says what would change", function()
	healthy()
	local rows, err = run(params({ batch = 2 }), { dry_run = true })
	assert.eq(err, nil)
	assert.eq(rows, {
		{ host = "web1", from = "1.0", to = "2.0", status = "planned" },
		{ host = "web2", from = "1.0", to = "2.0", status = "planned" },
		{ host = "web3", from = "2.0", to = "2.0", status = "unchanged" },
		{ host = "web4", from = "1.0", to = "2.0", status = "planned" },
		{ host = "web5", to = "2.0", status = "planned" },
		{ host = "web6", from = "1.0", to = "2.0", status = "planned" },
	})
	assert.called("s3.head", { target = "releases/app/2.0/app-2.0.tar.gz" }, 1)
	assert.not_called("ssh.run")
	assert.not_called("ssh.put")
	-- no tag was set: the real run still has every host to do
	rows = run(params({ batch = 2 }))
	assert.eq(statuses(rows), { web1 = "updated", web2 = "updated", web3 = "unchanged", web4 = "updated", web5 = "updated", web6 = "updated" })
end)

test("a package the store lacks fails the run before any host is reached", function()
	healthy()
	fake("s3.head", { target = "releases/app/2.0/app-2.0.tar.gz" }, json.null)
	local _, err = run(params())
	assert.fails(err, "the package releases/app/2.0/app-2.0.tar.gz cannot be used, nothing was changed: s3.object: releases/app/2.0/app-2.0.tar.gz: NoSuchKey: there is no such object")
	assert.not_called("ssh.run")
	assert.not_called("ssh.put")
end)

test("bucket, file and dest shape the key and the path; sudo runs the commands as root", function()
	fake("s3.head", { target = "artifacts/app/2.0/app.tgz" }, { bucket = "artifacts", key = "app/2.0/app.tgz", size = 10, sha256 = NEW_SHA })
	fake("ssh.run", { exit_code = 0 })
	fake("ssh.put", { bytes = 10, sha256 = NEW_SHA })
	local rows, err = run(params({ targets = "web5", bucket = "artifacts", file = "app.tgz", dest = "/srv/pkgs/", sudo = true }))
	assert.eq(err, nil)
	assert.eq(rows[1].status, "updated")
	assert.called("ssh.run", { host = "web5", command = "sudo -n -H -u root -- sh -c 'mkdir -p -- '\\''/srv/pkgs/app/2.0'\\'' && chown -- \"${SUDO_USER:-root}\" '\\''/srv/pkgs/app/2.0'\\'''" }, 1)
	assert.called("ssh.put", { host = "web5", path = "/srv/pkgs/app/2.0/app.tgz", object = { bucket = "artifacts", key = "app/2.0/app.tgz" } }, 1)
	assert.called("ssh.run", { host = "web5", command = "sudo -n -H -u root -- sh -c '/opt/app/install.sh '\\''/srv/pkgs/app/2.0/app.tgz'\\'' '\\''2.0'\\'''" }, 1)
	assert.called("ssh.run", { host = "web5", command = "sudo -n -H -u root -- sh -c '/opt/app/health.sh '\\''app'\\'' '\\''2.0'\\'''" }, 1)
end)

test("component, version, file and dest that are not plain names are refused before anything runs", function()
	healthy()
	for _, bad in ipairs({ "app;reboot", "app x", "../etc", "-x", ".hidden", "$(id)", "a/b", "" }) do
		local _, err = run(params({ component = bad }))
		assert.fails(err, "component")
		assert.fails(err, "is not a valid name")
		_, err = run(params({ version = bad }))
		assert.fails(err, "version")
		assert.fails(err, "is not a valid name")
		_, err = run(params({ file = bad }))
		assert.fails(err, "is not a valid name")
	end
	local _, err = run(params({ component = string.rep("a", 101) }))
	assert.fails(err, "at most 100")
	for _, dest in ipairs({ "opt/x", "/", "/opt/../etc", "/opt/./x", "/opt//x", "/opt/my apps" }) do
		_, err = run(params({ dest = dest }))
		assert.fails(err, "is not an absolute path")
	end
	_, err = run(params({ install = "  " }))
	assert.fails(err, "install: give the command to run")
	assert.eq(#calls(), 0)
end)

test("params are checked before anything runs", function()
	healthy()
	local p = params()
	for _, missing in ipairs({ "targets", "component", "version", "install", "health" }) do
		local without = table.clone(p)
		without[missing] = nil
		local _, err = run(without)
		assert.fails(err, missing)
	end
	local _, err = run(params({ batch = 0 }))
	assert.fails(err, "batch")
	_, err = run(params({ stop_after = 0 }))
	assert.fails(err, "stop_after")
	_, err = run(params({ targets = "group:nosuch" }))
	assert.fails(err, "matches no host")
	assert.eq(#calls(), 0)
end)
