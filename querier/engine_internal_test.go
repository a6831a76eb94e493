package querier

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/require"
)

// nestingDepth bounds the depth of the parsed expression from above, so
// that what --query.max-depth lets through the parser is never deeper; and
// stays close to it on the shapes queries take.
func TestNestingDepth(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	for _, tc := range []struct {
		query string
		want  int
	}{
		{query: `up`, want: 1},
		{query: `up{job="api",instance=~"a|b",path!="/"}`, want: 1},
		{query: `sum by (job) (rate(http_requests_total{job="api"}[5m]))`, want: 5},
		{query: `a or b or c`, want: 3},
		{query: `a + b * c - d / e`, want: 5},
		{query: `-a`, want: 2},
		{query: `max_over_time(rate(x[5m])[1h:1m] offset 5m @ 100)`, want: 7},
		{query: `histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) > 0.5 and on(job) up == 1`, want: 10},
		{query: `label_replace(label_replace(up, "a", "$1", "job", "(.*)"), "b", "$1", "a", "(.*)")`, want: 5},
		{query: `count_values("value", build_info) * on() group_left() topk(1, x)`, want: 3},
		{query: strings.Repeat("(", 10) + "1" + strings.Repeat(")", 10), want: 11},
		{query: `"a string ( with [ brackets {"`, want: 1},
		{query: `up # a comment ( [ {` + "\n" + ` or down`, want: 2},
		{query: `sum(`, want: 2},             // The parser reports the error.
		{query: `up)) or down`, want: 1},     // So here.
		{query: `up{job="a` + "\n", want: 1}, // And here.
		{query: `max_over_time((a or b)[5m:])`, want: 6},
	} {
		t.Run(tc.query, func(t *testing.T) {
			got := nestingDepth(tc.query)
			require.Equal(t, tc.want, got)
			expr, err := p.ParseExpr(tc.query)
			if err != nil {
				return
			}
			depth := 0
			parser.Inspect(expr, func(_ parser.Node, path []parser.Node) error {
				depth = max(depth, len(path)+1)
				return nil
			})
			require.GreaterOrEqual(t, got, depth, "the bound is below the parsed depth")
		})
	}
}

// queryPoints counts what the engine's evaluators step through, on the
// engine's own preprocessed statements.
func TestQueryPoints(t *testing.T) {
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 1, Timeout: time.Minute, EnableAtModifier: true, EnableNegativeOffset: true})
	ts := time.Unix(3600, 0)
	minute := time.Minute.Milliseconds()
	for _, tc := range []struct {
		name       string
		query      string
		start, end time.Time
		step       time.Duration
		want       int64
	}{
		{name: "instant", query: `up`, start: ts, end: ts, want: 1},
		{name: "range", query: `up`, start: ts, end: ts.Add(time.Hour), step: time.Minute, want: 61},
		{name: "instant subquery", query: `max_over_time(up[1h:1m])`, start: ts, end: ts, want: 1 + 60},
		{name: "default step", query: `max_over_time(up[1h:])`, start: ts, end: ts, want: 1 + 60},
		// 61 steps each read 60 points; the subquery's own grid is 120.
		{name: "range subquery", query: `max_over_time(up[1h:1m])`, start: ts, end: ts.Add(time.Hour), step: time.Minute, want: 61 + 61*60},
		// 2 steps an hour apart each read 5 points, but the subquery's
		// grid spans the hour between them: 65 steps.
		{name: "sparse range subquery", query: `max_over_time(up[5m:1m])`, start: ts, end: ts.Add(time.Hour), step: time.Hour, want: 2 + 65},
		// The inner subquery's grid (1d+1h at 1s: 90,000) is read 3,600
		// times at each of the outer's 1,440 steps.
		{name: "nested", query: `max_over_time(max_over_time(up[1h:1s])[1d:1m])`, start: ts, end: ts, want: 1 + 1440 + 1440*3600},
		// Step-invariant: evaluated once, at the start.
		{name: "at modifier", query: `max_over_time(up[1h:1m] @ 100)`, start: ts, end: ts.Add(time.Hour), step: time.Minute, want: 61 + 60},
		{name: "saturates", query: `max_over_time(max_over_time(up[290y:1ms])[290y:1ms])`, start: ts, end: ts, want: 1<<63 - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var qry promql.Query
			var err error
			if tc.step == 0 {
				qry, err = engine.NewInstantQuery(t.Context(), nil, nil, tc.query, tc.start)
			} else {
				qry, err = engine.NewRangeQuery(t.Context(), nil, nil, tc.query, tc.start, tc.end, tc.step)
			}
			require.NoError(t, err)
			defer qry.Close()
			require.Equal(t, tc.want, queryPoints(qry.Statement().(*parser.EvalStmt), minute, 0))
		})
	}
}
