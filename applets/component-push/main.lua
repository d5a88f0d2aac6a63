-- component-push: deploys COMPONENT at VERSION from the object store (BUCKET/COMPONENT/VERSION/FILE)
-- to the hosts whose cmdb tag `component.COMPONENT` says otherwise. One canary host first, then
-- batches. Each host: the package is streamed to DEST/COMPONENT/VERSION/FILE (its SHA-256 checked
-- on the host before it is renamed into place), installed, health-checked, and its tag set. A host
-- that fails gets its previous version (its tag) pushed, installed and checked again. Under
-- --dry-run nothing changes: each row says what would, and the plan shows every command.

-- Component names, versions and file names: one path segment, one key segment.
local NAME = "^[%w][%w._-]*$"
-- The cmdb tag holding each host's version: `component.` and the name make at most 128 characters.
local TAG = "component."
local TIMEOUT = { prepare = "1m", put = "30m", install = "15m", health = "5m" }
-- How much of a failing command's output a row keeps (its end, where the reason usually is).
local MAX_OUTPUT = 400

local function check_name(what, v)
	if not string.match(v, NAME) or #v > 100 then
		error(
			string.format("%s %q is not a valid name (letters, digits, `.`, `_`, `-`, starting with a letter or digit, at most 100)", what, v),
			0
		)
	end
end

-- A value as one shell word.
local function quote(s)
	return "'" .. (string.gsub(s, "'", "'\\''")) .. "'"
end

local function trim(s)
	return (string.gsub(string.gsub(s or "", "^%s+", ""), "%s+$", ""))
end

-- `template` with {path}, {version} and {component} replaced by their quoted values; other braces
-- are left as they are.
local function fill(template, values)
	return (string.gsub(template, "{(%a+)}", function(k)
		local v = values[k]
		return if v then quote(v) else nil
	end))
end

-- An error caught with pcall, without the position Lua put in front of it.
local function plain(err)
	return (string.gsub(tostring(err), "^[%w_./-]+%.lua:%d+: ", ""))
end

-- Why a host's step failed, from its ssh result.
local function why(what, r)
	if r.error then
		return what .. ": " .. r.error
	end
	local out = trim(r.stderr)
	if out == "" then
		out = trim(r.stdout)
	end
	if #out > MAX_OUTPUT then
		out = "..." .. string.sub(out, -MAX_OUTPUT)
	end
	local s = string.format("%s exited %s", what, tostring(r.exit_code))
	return if out ~= "" then s .. ": " .. out else s
end

return function(params, ctx)
	local component, version = params.component, params.version
	check_name("component", component)
	check_name("version", version)
	if params.file then
		check_name("file", params.file)
	end
	local dest = string.gsub(params.dest, "/+$", "")
	if not string.match(dest, "^/[%w._/-]+$") or string.find(dest .. "/", "/%.%.?/") or string.find(dest, "//", 1, true) then
		error(string.format("dest %q is not an absolute path of plain segments (letters, digits, . _ - /), other than /", params.dest), 0)
	end
	for _, p in ipairs({ "install", "health" }) do
		if trim(params[p]) == "" then
			error(string.format("%s: give the command to run, e.g. %s", p,
				if p == "install" then "tar -xzf {path} -C /opt/app" else "systemctl is-active app"), 0)
		end
	end
	local tag = TAG .. component
	local bucket = params.bucket

	local function file_of(v)
		return params.file or string.format("%s-%s.tar.gz", component, v)
	end
	local function key_of(v)
		return string.format("%s/%s/%s", component, v, file_of(v))
	end
	local function dir_of(v)
		return string.format("%s/%s/%s", dest, component, v)
	end
	local function path_of(v)
		return dir_of(v) .. "/" .. file_of(v)
	end

	-- The objects of each version, looked up once (a dry run looks too: reads are allowed).
	local objects = {}
	local function object_of(v)
		if objects[v] == nil and (not string.match(v, NAME) or #v > 100) then
			objects[v] = { error = string.format("the cmdb tag %s names version %q, which is not a valid version", tag, v) }
		elseif objects[v] == nil then
			local ok, handle = pcall(s3.object, bucket, key_of(v))
			objects[v] = if ok then { handle = handle } else { error = plain(handle) }
		end
		return objects[v].handle, objects[v].error
	end
	local pkg, missing = object_of(version)
	if not pkg then
		error(string.format("the package %s/%s cannot be used, nothing was changed: %s", bucket, key_of(version), missing), 0)
	end
	if not pkg.sha256 then
		log.warn(pkg.label .. " has no recorded SHA-256: each host checks the bytes it was sent, not what was uploaded")
	end

	local hosts = cmdb.hosts(params.targets)
	local rows, todo = {}, {}
	for _, h in ipairs(hosts) do
		local from = h.tags and h.tags[tag] or nil
		local row = { host = h.name, from = from, to = version }
		rows[h.name] = row
		if from == version then
			row.status = "unchanged"
		else
			table.insert(todo, h.name)
		end
	end

	local run_opts = function(timeout)
		return { sudo = if params.sudo then true else nil, timeout = timeout }
	end

	-- Runs one step on `names` (one ssh call): the hosts it went well on, and each host's result;
	-- `failed[host]` says why for the others.
	local function step(names, what, call, failed)
		local ok, results = {}, {}
		if #names == 0 then
			return ok, results
		end
		for _, r in ipairs(call(table.concat(names, ","))) do
			results[r.host] = r
			if r.ok then
				table.insert(ok, r.host)
			else
				failed[r.host] = why(what, r)
			end
		end
		return ok, results
	end

	-- Puts version `v` (object `obj`) on `names`, installs it and checks its health: the hosts
	-- where all went well, why it failed on the others, and the SHA-256 each host verified.
	local function deploy(names, v, obj)
		local failed, sha256 = {}, {}
		local dir, path = dir_of(v), path_of(v)
		-- The directory belongs to the login user, who writes the file beside its final path.
		local mkdir = "mkdir -p -- " .. quote(dir)
		if params.sudo then
			mkdir ..= ' && chown -- "${SUDO_USER:-root}" ' .. quote(dir)
		end
		local left = step(names, "mkdir " .. dir, function(sel)
			return ssh.run(sel, mkdir, run_opts(TIMEOUT.prepare))
		end, failed)
		local puts
		left, puts = step(left, "put " .. path, function(sel)
			return ssh.put(sel, path, obj, { mode = "0644", timeout = TIMEOUT.put })
		end, failed)
		local put_ok = {}
		for _, h in ipairs(left) do
			local got = puts[h].sha256
			if got and obj.sha256 and string.lower(got) ~= string.lower(obj.sha256) then
				failed[h] = string.format("put %s: the host has SHA-256 %s, the store recorded %s", path, got, obj.sha256)
			else
				sha256[h] = got
				table.insert(put_ok, h)
			end
		end
		local values = { path = path, version = v, component = component }
		left = step(put_ok, "install", function(sel)
			return ssh.run(sel, fill(params.install, values), run_opts(TIMEOUT.install))
		end, failed)
		left = step(left, "health", function(sel)
			return ssh.run(sel, fill(params.health, values), run_opts(TIMEOUT.health))
		end, failed)
		return left, failed, sha256
	end

	-- Hosts that failed go back to the version their tag names, when they have one.
	local function roll_back(failed_hosts, failed)
		local by_version, order = {}, {}
		for _, h in ipairs(failed_hosts) do
			local row = rows[h]
			row.error = failed[h]
			if row.from then
				if not by_version[row.from] then
					by_version[row.from] = {}
					table.insert(order, row.from)
				end
				table.insert(by_version[row.from], h)
			else
				row.status = "failed"
			end
		end
		for _, v in ipairs(order) do
			local names = by_version[v]
			local obj, err = object_of(v)
			if not obj then
				for _, h in ipairs(names) do
					rows[h].status = "rollback_failed"
					rows[h].error ..= string.format("; rollback to %s failed: %s", v, err)
				end
				continue
			end
			local ok, again = deploy(names, v, obj)
			for _, h in ipairs(ok) do
				rows[h].status = "rolled_back"
			end
			for h, e in pairs(again) do
				rows[h].status = "rollback_failed"
				rows[h].error ..= string.format("; rollback to %s failed: %s", v, e)
			end
		end
	end

	-- The canary alone, then batches.
	local groups = {}
	if #todo > 0 then
		table.insert(groups, { todo[1] })
	end
	for i = 2, #todo, params.batch do
		table.insert(groups, table.move(todo, i, math.min(i + params.batch - 1, #todo), 1, {}))
	end

	local failures, stopped = 0, nil
	for gi, names in ipairs(groups) do
		if stopped then
			for _, h in ipairs(names) do
				rows[h].status = "skipped"
				rows[h].error = "not started: " .. stopped
			end
			continue
		end
		local ok, failed, sha256 = deploy(names, version, pkg)
		for _, h in ipairs(ok) do
			local row = rows[h]
			row.sha256 = sha256[h]
			row.status = if ctx.dry_run then "planned" else "updated"
			local set, err = pcall(cmdb.set, h, { tags = { [tag] = version } })
			if not set then
				row.error = string.format("deployed, but the cmdb tag %s could not be set: %s", tag, plain(err))
			end
		end
		local bad = {}
		for _, h in ipairs(names) do
			if failed[h] then
				rows[h].sha256 = sha256[h]
				table.insert(bad, h)
			end
		end
		if #bad > 0 then
			roll_back(bad, failed)
			failures += #bad
			if gi == 1 then
				stopped = string.format("the canary %s failed", names[1])
			elseif failures >= params.stop_after then
				stopped = string.format("%d host(s) failed (stop_after = %d)", failures, params.stop_after)
			end
		end
	end

	local out = json.array()
	local counts = {}
	for _, h in ipairs(hosts) do
		local row = rows[h.name]
		counts[row.status] = (counts[row.status] or 0) + 1
		table.insert(out, row)
	end
	local parts = {}
	for _, s in ipairs({ "updated", "planned", "unchanged", "failed", "rolled_back", "rollback_failed", "skipped" }) do
		if counts[s] or s == "updated" and not ctx.dry_run or s == "planned" and ctx.dry_run then
			table.insert(parts, string.format("%d %s", counts[s] or 0, (string.gsub(s, "_", " "))))
		end
	end
	log.info(string.format("%s %s from %s: %s%s", component, version, pkg.label, table.concat(parts, ", "),
		if ctx.dry_run then " (dry run: nothing changed)" else ""))
	if failures > 0 then
		log.warn(string.format("%d host(s) failed; see each row's error (cmdb tag %s still names the version they had)", failures, tag))
	end
	return out
end
