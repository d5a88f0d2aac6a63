-- config-publish: one canary host, then batches; stops after `stop_after` failures. Under
-- --dry-run nothing changes: each row carries the diff the publish would make on that host.
return function(params, ctx)
	local results = config.publish(params.item, params.targets, {
		env = params.env,
		version = params.version,
		canary = 1,
		batch = params.batch,
		stop_after = params.stop_after,
	})
	local rows = json.array()
	local counts = { published = 0, unchanged = 0, failed = 0, skipped = 0, planned = 0 }
	for _, r in ipairs(results) do
		local status
		if r.planned then
			status = "planned"
		elseif r.skipped then
			status = "skipped"
		elseif not r.ok then
			status = "failed"
		elseif r.changed == false then
			status = "unchanged"
		else
			status = "published"
		end
		counts[status] += 1
		table.insert(rows, {
			host = r.host,
			status = status,
			action = r.action,
			version = r.version,
			env = r.env,
			failed_at = r.failed_at,
			restored = r.restored,
			error = r.error,
			output = r.output,
			diff = r.diff,
			seconds = math.floor(r.duration * 100 + 0.5) / 100,
		})
	end
	log.info(string.format("%s: %d published, %d unchanged, %d failed, %d skipped%s", params.item, counts.published, counts.unchanged,
		counts.failed, counts.skipped, if ctx.dry_run then string.format(", %d planned", counts.planned) else ""))
	if counts.failed > 0 then
		log.warn("failed hosts kept (or got back) their previous file; see each row's failed_at and output")
	end
	return rows
end
