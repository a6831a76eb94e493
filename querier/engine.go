package querier

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
)

// Flags of the limits on a query's shape, which QueryShapeError names.
const (
	maxLengthFlag = "--query.max-length"
	maxDepthFlag  = "--query.max-depth"
	maxPointsFlag = "--query.max-points"
)

// QueryShapeError is the error of a query refused before it is evaluated: its
// text, its nesting or the points its evaluation would create exceed a
// limit. Too long or too deeply nested text is bad input, which the HTTP API
// answers with 400 "bad_data", as it answers a query that does not parse;
// too many points is a query over a limit, answered with 422 "execution",
// as LimitError is.
type QueryShapeError struct {
	// Flag is the flag that sets the limit: --query.max-length,
	// --query.max-depth or --query.max-points.
	Flag  string
	Limit int64
	// Got is the query's value: its length in bytes, its nesting depth or
	// its points (at least Limit+1; math.MaxInt64 when too large to count).
	Got int64
}

// Error names the limit and its flag, so the user knows what to change or
// whom to ask.
func (e *QueryShapeError) Error() string {
	switch e.Flag {
	case maxLengthFlag:
		return fmt.Sprintf("the query is %d bytes long, more than the limit set by %s=%d; select with fewer, shorter expressions", e.Got, e.Flag, e.Limit)
	case maxDepthFlag:
		return fmt.Sprintf("the query nests %d levels deep (each bracket, and each operator chained in one, is a level), more than the limit set by %s=%d; chain fewer operators, or use a regular expression matcher instead of many joined selectors", e.Got, e.Flag, e.Limit)
	default:
		return fmt.Sprintf("the query would evaluate %s points (its steps, and for each subquery its range/step at every step of its parent), more than the limit set by %s=%d; use a coarser subquery step, a shorter subquery range or a larger query step", pointsString(e.Got), e.Flag, e.Limit)
	}
}

func pointsString(n int64) string {
	if n == math.MaxInt64 {
		return "more than 9223372036854775806"
	}
	return fmt.Sprint(n)
}

// shapeParser is the PromQL parser of the API and its engine: it refuses a
// query longer than maxLength bytes before parsing it, and one that nests
// deeper than maxDepth before parsing it too. Prometheus' parser takes time
// quadratic in the nesting (256 KiB of nested parentheses take half a
// minute, and 200,000 joined selectors overflow the evaluator's stack), so
// the depth must be known before the parser sees the text: nestingDepth
// reads it off the lexer's tokens, in linear time and without recursion.
// Zero limits are no limits.
type shapeParser struct {
	parser.Parser
	maxLength int
	maxDepth  int
}

// ParseExpr implements parser.Parser.
func (p *shapeParser) ParseExpr(input string) (parser.Expr, error) {
	if err := p.checkLength(input); err != nil {
		return nil, err
	}
	if p.maxDepth > 0 {
		if depth := nestingDepth(input); depth > p.maxDepth {
			return nil, &QueryShapeError{Flag: maxDepthFlag, Limit: int64(p.maxDepth), Got: int64(depth)}
		}
	}
	return p.Parser.ParseExpr(input)
}

// ParseMetricSelector implements parser.Parser: a selector (a match[] of
// /api/v1/series, say) nests nothing, so only its length is limited.
func (p *shapeParser) ParseMetricSelector(input string) ([]*labels.Matcher, error) {
	if err := p.checkLength(input); err != nil {
		return nil, err
	}
	return p.Parser.ParseMetricSelector(input)
}

// ParseMetricSelectors implements parser.Parser, limiting each selector's
// length.
func (p *shapeParser) ParseMetricSelectors(matchers []string) ([][]*labels.Matcher, error) {
	for _, m := range matchers {
		if err := p.checkLength(m); err != nil {
			return nil, err
		}
	}
	return p.Parser.ParseMetricSelectors(matchers)
}

func (p *shapeParser) checkLength(input string) error {
	if p.maxLength > 0 && len(input) > p.maxLength {
		return &QueryShapeError{Flag: maxLengthFlag, Limit: int64(p.maxLength), Got: int64(len(input))}
	}
	return nil
}

// nestingDepth returns an upper bound of the depth of input's expression
// tree (its nodes on the longest path from the root to a leaf), from its
// tokens alone, in linear time and without recursion. A level of brackets
// adds one (a parenthesis, an aggregation) or two (a function call: the
// call and its arguments) to the depth of what it holds; every operator in
// a level adds one, binary or unary, since PromQL chains operators to the
// left ("a or b or c" is 3 deep), and so does each [range] (the matrix
// selector or subquery wrapping its operand). Label matchers in braces add
// nothing. The bound is what --query.max-depth limits, so the parser only
// ever sees shallow text. On a lexing error it stops: the parser reports
// the error.
func nestingDepth(input string) int {
	type level struct {
		weight            int // What the brackets add: 0, 1 or 2.
		ops, deepestChild int
		selector          bool // Braces: label matchers, whose = and =~ are no operators.
	}
	stack := []level{{}}
	closeLevel := func() {
		closed := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		parent := &stack[len(stack)-1]
		parent.deepestChild = max(parent.deepestChild, closed.weight+closed.ops+closed.deepestChild)
	}
	lex := parser.Lex(input)
	var it, prev parser.Item
	for ; ; prev = it {
		lex.NextItem(&it)
		top := &stack[len(stack)-1]
		switch it.Typ {
		case parser.EOF, parser.ERROR:
			for len(stack) > 1 { // Unclosed brackets: the parser will say so.
				closeLevel()
			}
			return stack[0].ops + stack[0].deepestChild + 1
		case parser.LEFT_PAREN:
			weight := 1
			if prev.Typ == parser.IDENTIFIER {
				weight = 2 // A function call.
			}
			stack = append(stack, level{weight: weight})
		case parser.LEFT_BRACKET:
			top.ops++
			stack = append(stack, level{})
		case parser.LEFT_BRACE:
			stack = append(stack, level{selector: true})
		case parser.RIGHT_PAREN, parser.RIGHT_BRACKET, parser.RIGHT_BRACE:
			if len(stack) > 1 { // Else unbalanced: the parser will say so.
				closeLevel()
			}
		default:
			// @ modifies a selector, adding no node.
			if it.Typ.IsOperator() && it.Typ != parser.AT && !top.selector {
				top.ops++
			}
		}
	}
}

// shapeEngine is the PromQL engine of the API: Prometheus' engine, parsing
// with a shapeParser, and refusing before evaluation a query whose points
// (queryPoints) exceed maxPoints. Prometheus limits a range query to 11,000
// steps but not the steps of its subqueries: max_over_time(vector(1)[1y:1ms])
// has the engine allocate its step statistics for 3*10^10 steps and the
// process dies out of memory.
type shapeEngine struct {
	engine    promql.QueryEngine
	maxPoints int64 // 0: no limit
	// slots holds a token per query being evaluated, at most
	// --query.max-concurrency; nil: no limit. waitFor bounds the wait for
	// one (--query.timeout).
	slots   chan struct{}
	waitFor time.Duration
	// subqueryStep is the step of a subquery written without one, in
	// milliseconds, as the engine takes it.
	subqueryStep int64
}

// NewInstantQuery implements promql.QueryEngine.
func (e *shapeEngine) NewInstantQuery(ctx context.Context, q storage.Queryable, opts promql.QueryOpts, qs string, ts time.Time) (promql.Query, error) {
	qry, err := e.engine.NewInstantQuery(ctx, q, opts, qs, ts)
	if err != nil {
		return nil, err
	}
	return e.check(qry), nil
}

// NewRangeQuery implements promql.QueryEngine.
func (e *shapeEngine) NewRangeQuery(ctx context.Context, q storage.Queryable, opts promql.QueryOpts, qs string, start, end time.Time, interval time.Duration) (promql.Query, error) {
	qry, err := e.engine.NewRangeQuery(ctx, q, opts, qs, start, end, interval)
	if err != nil {
		return nil, err
	}
	return e.check(qry), nil
}

// check returns qry, or, when it would evaluate too many points, a query
// that fails with the QueryShapeError without evaluating anything: the API
// answers an error of Exec with 422 "execution", and one of the query's
// construction with 400 "bad_data".
func (e *shapeEngine) check(qry promql.Query) promql.Query {
	if e.maxPoints > 0 {
		if stmt, ok := qry.Statement().(*parser.EvalStmt); ok {
			if points := queryPoints(stmt, e.subqueryStep, e.maxPoints); points > e.maxPoints {
				return &refusedQuery{Query: qry, err: &QueryShapeError{Flag: maxPointsFlag, Limit: e.maxPoints, Got: points}}
			}
		}
	}
	if e.slots != nil {
		return &queuedQuery{Query: qry, e: e}
	}
	return qry
}

// queuedQuery is a query that waits for one of the engine's slots before
// it evaluates, as Prometheus' --query.max-concurrency queues queries: a
// flood of queries shares the cores instead of each getting a sliver.
type queuedQuery struct {
	promql.Query
	e *shapeEngine
}

// Exec implements promql.Query.
func (q *queuedQuery) Exec(ctx context.Context) *promql.Result {
	wait, cancel := context.WithTimeout(ctx, q.e.waitFor)
	defer cancel()
	select {
	case q.e.slots <- struct{}{}:
	case <-wait.Done():
		if errors.Is(ctx.Err(), context.Canceled) {
			return &promql.Result{Err: promql.ErrQueryCanceled("waiting for a query slot")}
		}
		return &promql.Result{Err: promql.ErrQueryTimeout("waiting for one of the --query.max-concurrency query slots")}
	}
	defer func() { <-q.e.slots }()
	return q.Query.Exec(ctx)
}

// refusedQuery is a query refused before evaluation: Exec returns err.
type refusedQuery struct {
	promql.Query
	err error
}

// Exec implements promql.Query.
func (q *refusedQuery) Exec(context.Context) *promql.Result {
	return &promql.Result{Err: q.err}
}

// evalGrid is the step grid of one of the engine's evaluators, in
// milliseconds: the query's own, or a subquery's.
type evalGrid struct{ start, end, interval int64 }

func (g evalGrid) steps() int64 {
	if g.end < g.start {
		return 0
	}
	return (g.end-g.start)/g.interval + 1
}

// queryPoints returns the points that evaluating stmt creates: the steps of
// the query (1 for an instant query), and for each subquery the larger of
// the points each step of its parent reads from it (range/step, at every
// step of the parent's grid, so nested subqueries multiply) and the steps of
// its own grid across the parent's span, which the engine evaluates whole,
// gaps between the parent's windows included. stmt is the engine's
// preprocessed statement, whose step-invariant parts are evaluated once.
// Counting stops past limit (when positive), and saturates at
// math.MaxInt64.
func queryPoints(stmt *parser.EvalStmt, defaultStep, limit int64) int64 {
	top := evalGrid{start: stmt.Start.UnixMilli(), end: stmt.End.UnixMilli(), interval: max(stmt.Interval.Milliseconds(), 1)}
	if stmt.Interval <= 0 {
		top.end = top.start
	}
	total := top.steps()
	errOver := errors.New("over the limit")
	parser.Inspect(stmt.Expr, func(node parser.Node, path []parser.Node) error {
		subq, ok := node.(*parser.SubqueryExpr)
		if !ok {
			return nil
		}
		parent := top
		for _, n := range path {
			parent = childGrid(parent, n, defaultStep)
		}
		own := childGrid(parent, subq, defaultStep)
		window := ceilDiv(subq.Range.Milliseconds(), own.interval)
		total = addSaturating(total, max(own.steps(), mulSaturating(parent.steps(), window)))
		if limit > 0 && total > limit {
			return errOver // Stop walking: the answer is known.
		}
		return nil
	})
	return total
}

// childGrid returns the grid on which the engine evaluates node's children
// when it evaluates node on g, as promql's engine and its cost estimate
// align them (subqueryEvaluationTimes).
func childGrid(g evalGrid, node parser.Node, defaultStep int64) evalGrid {
	switch n := node.(type) {
	case *parser.StepInvariantExpr:
		g.end = g.start
	case *parser.SubqueryExpr:
		step := n.Step.Milliseconds()
		if step <= 0 {
			step = defaultStep
		}
		step = max(step, 1)
		offset, rng := n.OriginalOffset.Milliseconds(), n.Range.Milliseconds()
		end := g.start + ((g.end-g.start)/g.interval)*g.interval
		if n.Timestamp != nil {
			// Every parent step reads the same window.
			offset += g.start - *n.Timestamp
			end = g.start
		}
		start := step * ((g.start - offset - rng) / step)
		if start <= g.start-offset-rng {
			start += step
		}
		g = evalGrid{start: start, end: end - offset, interval: step}
	}
	return g
}

func ceilDiv(a, b int64) int64 {
	if a <= 0 {
		return 0
	}
	return (a + b - 1) / b
}

func mulSaturating(a, b int64) int64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	if a > math.MaxInt64/b {
		return math.MaxInt64
	}
	return a * b
}

func addSaturating(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}
