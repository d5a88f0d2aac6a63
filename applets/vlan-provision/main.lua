-- vlan-provision: the same change in each vendor's words. netdev.configure picks the lines by
-- each device's profile, enters and leaves configuration mode, stops at a rejected line and
-- saves on success. Under --dry-run nothing is sent: each row shows the exact lines.
return function(params)
	local id, name = params.vlan, params.name
	if not string.match(name, "^[%w_%-]+$") or #name > 32 then
		error(string.format("name %q: use up to 32 letters, digits, - and _", name))
	end
	local lines
	if params.remove then
		lines = {
			cisco_ios = { "no vlan " .. id },
			huawei_vrp = { "undo vlan " .. id },
			hp_comware = { "undo vlan " .. id },
			juniper_junos = { "delete vlans " .. name },
		}
	else
		lines = {
			cisco_ios = { "vlan " .. id, "name " .. name, "exit" },
			huawei_vrp = { "vlan " .. id, "description " .. name, "quit" },
			hp_comware = { "vlan " .. id, "name " .. name, "quit" },
			juniper_junos = { string.format("set vlans %s vlan-id %d", name, id) },
		}
	end
	local results = netdev.configure(params.devices, lines, { save = params.save, canary = params.canary and 1 or 0, stop_after = 1 })
	local rows = json.array()
	local done, failed, skipped = 0, 0, 0
	for _, r in ipairs(results) do
		local status
		if r.planned then
			status = "planned"
		elseif r.skipped then
			status, skipped = "skipped", skipped + 1
		elseif r.ok then
			status, done = "done", done + 1
		else
			status, failed = "failed", failed + 1
		end
		table.insert(rows, {
			host = r.host,
			profile = r.profile,
			status = status,
			lines = table.concat(r.lines or {}, "\n"),
			saved = r.saved or false,
			rejected = r.rejected,
			error = r.error,
		})
	end
	if failed > 0 then
		log.warn(string.format("VLAN %d: %d failed, %d skipped after the failure", id, failed, skipped))
	else
		log.info(string.format("VLAN %d (%s): %d devices %s", id, name, done, if params.remove then "cleaned" else "provisioned"))
	end
	return rows
end
