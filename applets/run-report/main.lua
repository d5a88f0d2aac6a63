-- Records each run in kv and reports totals per caller and label plus the latest runs.
local tbl = require "opslet.tables"

local KEEP = 50

return function(params, ctx)
	if params.reset then
		for _, k in ipairs(kv.keys()) do
			kv.delete(k)
		end
		log.warn("run history cleared by " .. ctx.caller)
	end
	local history = kv.get("history") or {}
	table.insert(history, { at = time.iso(), caller = ctx.caller, label = params.label, via = ctx.via })
	while #history > KEEP do
		table.remove(history, 1)
	end
	kv.set("history", history)
	local total = kv.incr("total")

	local recent = {}
	for i = #history, math.max(1, #history - params.show + 1), -1 do
		table.insert(recent, history[i])
	end
	return {
		total_runs = total,
		by_caller = tbl.count_by(history, "caller"),
		by_label = tbl.count_by(history, "label"),
		recent = json.array(recent),
		dry_run = ctx.dry_run,
	}
end
