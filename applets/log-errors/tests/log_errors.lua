-- log-errors: the aggregation per service, the latest messages of each, the window, the
-- service filter, and Elasticsearch failing.

local function since(minutes)
	return { range = { ["@timestamp"] = { gte = "now-" .. minutes .. "m" } } }
end

-- A terms aggregation's answer, as Elasticsearch gives it.
local function by_service(buckets)
	return {
		aggregations = {
			by_service = { doc_count_error_upper_bound = 0, sum_other_doc_count = 0, buckets = buckets },
		},
	}
end

-- A _search answer of error documents (newest first), with only `message` in each _source.
local function latest(service, messages)
	local hits = {}
	for i, m in ipairs(messages) do
		hits[i] = {
			_index = ".ds-logs-app-2024.06.03-000041", _id = service .. "-" .. i, _score = json.null,
			_source = { message = m }, sort = { 1717400500000 - i * 1000 },
		}
	end
	return { took = 4, timed_out = false, hits = { total = { value = #messages, relation = "eq" }, max_score = json.null, hits = hits } }
end

-- The query of a service's latest errors.
local function errors_of(service, minutes)
	return { bool = { filter = { { term = { level = "ERROR" } }, { term = { service = service } }, since(minutes or 15) } } }
end

local function three_services()
	fake("es.aggs", by_service({
		{ key = "checkout", doc_count = 57 },
		{ key = "payments", doc_count = 9 },
		{ key = "search", doc_count = 1 },
	}))
	fake("es.search", { query = errors_of("checkout") }, latest("checkout", {
		"upstream timed out (110: Connection timed out) while reading response header from upstream",
		"POST /api/cart/checkout 502",
		"circuit breaker open for payments",
	}))
	fake("es.search", { query = errors_of("payments") }, latest("payments", { "card declined: gateway HTTP 500", "retrying charge 3/3" }))
	fake("es.search", { query = errors_of("search") }, latest("search", json.array()))
end

test("errors per service as the aggregation orders them, with the latest messages of each", function()
	three_services()
	local rows, err = run({})
	assert.eq(err, nil)
	assert.eq(rows, {
		{
			service = "checkout", errors = 57,
			latest = "upstream timed out (110: Connection timed out) while reading response header from upstream"
				.. " | POST /api/cart/checkout 502 | circuit breaker open for payments",
		},
		{ service = "payments", errors = 9, latest = "card declined: gateway HTTP 500 | retrying charge 3/3" },
		{ service = "search", errors = 1, latest = "" },
	})
end)

test("the aggregation and the searches ask for ERROR lines in the window", function()
	three_services()
	run({})
	local a = calls("es.aggs")
	assert.eq(#a, 1)
	assert.eq(a[1].target, "logs-*")
	assert.eq(a[1].args, {
		size = 0,
		query = { bool = { filter = { { term = { level = "ERROR" } }, since(15) } } },
		aggs = { by_service = { terms = { field = "service", size = 50 } } },
	})
	local s = calls("es.search")
	assert.eq(#s, 3, "one search per service")
	assert.eq(s[1].target, "logs-*")
	assert.eq(s[1].args, {
		query = errors_of("checkout"),
		size = 3,
		sort = { { ["@timestamp"] = "desc" } },
		_source = { "message" },
	})
	assert.eq(s[2].args.query.bool.filter[2], { term = { service = "payments" } })
	assert.eq(s[3].args.query.bool.filter[2], { term = { service = "search" } })
end)

test("top messages of a service are joined, each cut at 200 characters", function()
	local long = string.rep("x", 250)
	fake("es.aggs", by_service({ { key = "checkout", doc_count = 2 } }))
	fake("es.search", latest("checkout", { long, "short one" }))
	local rows = run({ top = 2 })
	assert.eq(rows[1].latest, string.rep("x", 200) .. " | short one")
	assert.eq(calls("es.search")[1].args.size, 2)
end)

test("top = 0 counts only, without searching for messages", function()
	three_services()
	local rows = run({ top = 0 })
	assert.eq(rows, {
		{ service = "checkout", errors = 57, latest = "" },
		{ service = "payments", errors = 9, latest = "" },
		{ service = "search", errors = 1, latest = "" },
	})
	assert.not_called("es.search", {})
end)

test("service, minutes and index narrow the search", function()
	fake("es.aggs", by_service({ { key = "payments", doc_count = 4 } }))
	fake("es.search", latest("payments", { "card declined" }))
	local rows = run({ service = "payments", minutes = 60, index = "app-*" })
	assert.eq(rows, { { service = "payments", errors = 4, latest = "card declined" } })
	local a = calls("es.aggs")[1]
	assert.eq(a.target, "app-*")
	assert.eq(a.args.query, {
		bool = { filter = { { term = { level = "ERROR" } }, since(60), { term = { service = "payments" } } } },
	})
	local s = calls("es.search")[1]
	assert.eq(s.target, "app-*")
	assert.eq(s.args.query.bool.filter[3], since(60))
end)

test("no errors in the window: an empty list and no searches", function()
	fake("es.aggs", by_service(json.array()))
	local rows, err = run({ minutes = 5 })
	assert.eq(err, nil)
	assert.eq(rows, json.array())
	assert.not_called("es.search", {})
end)

test("a hit without a message does not show as one", function()
	fake("es.aggs", by_service({ { key = "checkout", doc_count = 2 } }))
	fake("es.search", {
		hits = {
			total = { value = 2, relation = "eq" },
			hits = {
				{ _index = "logs-1", _id = "a", _score = json.null, _source = {}, sort = { 3 } },
				{ _index = "logs-1", _id = "n", _score = json.null, _source = { message = json.null }, sort = { 2 } },
				{ _index = "logs-1", _id = "b", _score = json.null, _source = { message = "boom" }, sort = { 1 } },
			},
		},
	})
	local rows, err = run({})
	assert.eq(err, nil)
	assert.eq(rows[1].latest, "boom")
end)

test("the aggregation failing fails the run", function()
	fake("es.aggs", { error = "logs answered HTTP 400: search_phase_execution_exception: Text fields are not optimised for operations that require per-document field data [service]" })
	local rows, err = run({})
	assert.eq(rows, nil)
	assert.fails(err, "Text fields are not optimised")
	assert.not_called("es.search", {})
end)

test("a search for messages failing fails the run", function()
	three_services()
	fake("es.search", { error = "logs answered HTTP 429: es_rejected_execution_exception: rejected execution of search" })
	local _, err = run({})
	assert.fails(err, "es_rejected_execution_exception")
	assert.called("es.search", {}, 1)
end)

test("a dry run reads as a real run does", function()
	three_services()
	local rows, err = run({}, { dry_run = true })
	assert.eq(err, nil)
	assert.eq(#rows, 3)
	assert.called("es.aggs", {}, 1)
end)

test("params are checked before anything is searched", function()
	three_services()
	local _, err = run({ minutes = 0 })
	assert.fails(err, "minutes")
	_, err = run({ minutes = 10081 })
	assert.fails(err, "minutes")
	_, err = run({ top = 21 })
	assert.fails(err, "top")
	_, err = run({ service = 5 })
	assert.fails(err, "service")
	assert.eq(#calls(), 0)
end)

test("an index that is no index is refused by the es module before sending", function()
	three_services()
	for _, index in ipairs({ ".security", "../x" }) do
		local _, err = run({ index = index })
		assert.fails(err, "es.aggs")
	end
	assert.eq(#calls(), 0)
end)
