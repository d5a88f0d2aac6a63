-- alert-remediate: the closed loop for one Zabbix problem.
--   1. look the problem up (it must be open, unacknowledged, average or worse);
--   2. count the service's errors in the logs over the last 15 minutes (the evidence);
--   3. when the rules allow, restart the service on the problem's host over ssh;
--   4. acknowledge the problem with what was found and done (and close it if the restart worked).
-- Under --dry-run nothing is restarted or acknowledged: the result is the plan.
local q = require "opslet.es"

local function decide(problem, host, errors, min_errors)
	if problem.acknowledged then
		return false, "already acknowledged by someone"
	end
	if problem.severity < 3 then
		return false, "severity " .. problem.severity_name .. " is below average"
	end
	if not problem.host then
		return false, "the problem has no host"
	end
	if not host then
		return false, "the host " .. problem.host .. " is not in the cmdb"
	end
	if errors < min_errors then
		return false, string.format("only %d error(s) in the logs (the rule asks for %d)", errors, min_errors)
	end
	return true, string.format("%d error(s) in the logs in the last 15 minutes", errors)
end

return function(params, ctx)
	local found = zabbix.problems({ limit = 500 })
	local problem
	for _, p in ipairs(found) do
		if p.eventid == params.eventid then
			problem = p
		end
	end
	if not problem then
		return { eventid = params.eventid, action = "none", reason = "no open problem with this event id" }
	end
	local service = params.service or problem.tags.service
	if not service or not string.match(service, "^[%w@][%w@%.:_%-]*$") then
		error(string.format("no usable service for event %s (give the service param or a `service` tag)", params.eventid))
	end
	-- A problem without a host has `host = json.null` (truthy), not nil.
	if type(problem.host) ~= "string" then
		problem.host = nil
	end
	local host = problem.host and cmdb.host(problem.host)
	local errors = es.count(params.index, q.bool({ filter = { q.term("level", "ERROR"), q.term("service", service), q.since("@timestamp", "15m") } }))
	local go, why = decide(problem, host, errors, params.min_errors)
	local plan = {
		eventid = problem.eventid,
		problem = problem.name,
		host = problem.host,
		service = service,
		errors_15m = errors,
		decision = go and "restart" or "leave",
		reason = why,
	}
	log.info(string.format("%s on %s: %s (%s)", problem.name, tostring(problem.host), plan.decision, why))
	if not go then
		if not problem.acknowledged then
			zabbix.ack(problem.eventid, { message = "opslet alert-remediate: no action, " .. why })
		end
		plan.acknowledged = not ctx.dry_run and not problem.acknowledged
		return plan
	end
	local r = ssh.run(host.name, "systemctl restart " .. service, { sudo = true, timeout = 120 })[1]
	if r.planned then
		plan.planned_command = r.command
		plan.message = string.format("opslet alert-remediate would restart %s on %s (%s)", service, host.name, why)
		zabbix.ack(problem.eventid, { message = plan.message, close = true })
		return plan
	end
	plan.restart_ok = r.ok
	plan.restart_error = not r.ok and (r.error or (string.gsub(r.stderr, "%s+$", ""))) or nil
	local message
	if r.ok then
		message = string.format("opslet alert-remediate: restarted %s on %s (%s)", service, host.name, why)
	else
		message = string.format("opslet alert-remediate: restarting %s on %s FAILED: %s (%s)", service, host.name, tostring(plan.restart_error), why)
	end
	zabbix.ack(problem.eventid, { message = message, close = r.ok })
	plan.acknowledged = not ctx.dry_run
	plan.message = message
	return plan
end
