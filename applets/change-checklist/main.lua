-- Builds the checklist for a planned change. Pure computation: it touches no host.
local steps = require "steps"

return function(params, ctx)
	local start = if params.start then time.parse(params.start) else time.now()
	local finish = start + params.window_minutes * 60
	local approvers = params.approvers or {}
	if params.change == "reboot" and #approvers == 0 then
		error("a reboot needs at least one approver (--param approvers=alice,bob)")
	end

	local list = {}
	local function add(phase, action, owner)
		table.insert(list, { ["#"] = #list + 1, phase = phase, action = action, owner = owner or "operator" })
	end

	add("prepare", string.format("announce %s %s on %s, %s to %s", params.change, params.service, params.hosts, time.iso(start), time.iso(finish)))
	if #approvers > 0 then
		add("prepare", "sign-off from " .. table.concat(approvers, ", "), approvers[1])
	end
	add("prepare", "silence alerts for " .. params.service .. " during the window")
	if params.canary > 0 then
		for _, action in ipairs(steps.for_change(params.change, params.service)) do
			add("canary", action .. string.format(" (first %d host%s)", params.canary, params.canary == 1 and "" or "s"))
		end
		-- Without canary hosts there is no canary phase, and nothing to check before the rollout.
		add("canary", "check health of the canary hosts; stop here if anything is red")
	end
	for _, action in ipairs(steps.for_change(params.change, params.service)) do
		add("rollout", action .. " (remaining hosts, in batches)")
	end
	add("verify", "check " .. params.service .. " health and error rate against the baseline")
	if params.rollback then
		for _, action in ipairs(steps.rollback(params.change, params.service)) do
			add("rollback", action)
		end
	end
	add("close", "lift the alert silence and post the outcome")
	log.info(string.format("%d steps for %s of %s%s", #list, params.change, params.service, ctx.dry_run and " (dry run)" or ""))
	return list
end
