-- The steps of each kind of change, and how to undo them.
local M = {}

local forward = {
	deploy = { "deploy the new release of %s", "run smoke tests of %s" },
	config = { "back up the current %s config", "apply the new %s config and reload" },
	restart = { "drain traffic from %s", "restart %s", "put %s back into the pool" },
	reboot = { "drain traffic from %s", "reboot the host", "confirm %s came back" },
	patch = { "drain traffic from %s", "install OS patches", "reboot if required", "confirm %s came back" },
}

local backward = {
	deploy = { "redeploy the previous release of %s" },
	config = { "restore the backed-up %s config and reload" },
	restart = { "if %s does not come back, fail over to the standby" },
	reboot = { "if the host does not come back, power-cycle it over the BMC" },
	patch = { "boot the previous kernel", "downgrade the patched packages" },
}

local function fill(list, service)
	local out = {}
	for i, s in ipairs(list) do
		out[i] = string.format(s, service)
	end
	return out
end

function M.for_change(change, service)
	return fill(forward[change], service)
end

function M.rollback(change, service)
	return fill(backward[change], service)
end

return M
