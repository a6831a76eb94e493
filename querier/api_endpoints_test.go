package querier_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/querier"
)

// appendExemplars stores, for each series of data, one exemplar on every
// tenth sample whose index keep selects.
func appendExemplars(t testing.TB, db *tsdb.DB, data []series, keep func(i int) bool) {
	t.Helper()
	app := db.AppenderV2(context.Background())
	for _, s := range data {
		for i, smp := range s.samples {
			if i%10 != 0 || !keep(i) {
				continue
			}
			ex := exemplar.Exemplar{Labels: labels.FromStrings("trace_id", fmt.Sprintf("%s-%d", s.lset.Get("instance"), i)), Value: smp.F, Ts: smp.T, HasTs: true}
			_, err := app.Append(0, s.lset, 0, smp.T, smp.F, nil, nil, storage.AppendV2Options{Exemplars: []exemplar.Exemplar{ex}})
			require.NoError(t, err)
		}
	}
	require.NoError(t, app.Commit())
}

func TestAPI_QueryExemplars(t *testing.T) {
	data := testData()
	// Three replicas that each hold two thirds of the exemplars.
	dbs := make([]*tsdb.DB, 3)
	for r := range dbs {
		dbs[r] = newTestDB(t)
		appendExemplars(t, dbs[r], data, func(i int) bool { return (i/10)%3 != r })
	}
	reference := newTestDB(t)
	appendExemplars(t, reference, data, func(int) bool { return true })
	census := newAPI(t, newCluster(t, 3, dbs...).queryable)
	ref := newAPI(t, reference)

	for _, tc := range []struct {
		name    string
		params  url.Values
		wantLen int // Series in the answer.
	}{
		{name: "one series", params: url.Values{"query": {`http_requests_total{job="api",instance="10.0.0.1:80"}`}, "start": {"0"}, "end": {"3600"}}, wantLen: 1},
		{name: "an expression of two selectors", params: url.Values{"query": {`rate(http_requests_total{job="db"}[5m]) / on(instance) http_requests_total{job="api"}`}, "start": {"600"}, "end": {"1200"}}, wantLen: 10},
		{name: "no exemplars in range", params: url.Values{"query": {`http_requests_total`}, "start": {"7200"}, "end": {"7300"}}},
		{name: "no match", params: url.Values{"query": {`nope`}}},
	} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			t.Run(tc.name+" "+method, func(t *testing.T) {
				code, body := call(t, census, method, "/api/v1/query_exemplars", tc.params)
				refCode, refBody := call(t, ref, method, "/api/v1/query_exemplars", tc.params)
				require.Equal(t, http.StatusOK, code, "body: %s", body)
				require.Equal(t, refCode, code)
				require.JSONEq(t, string(refBody), string(body))
				var got []json.RawMessage
				require.NoError(t, json.Unmarshal(decode(t, body).Data, &got))
				require.Len(t, got, tc.wantLen)
			})
		}
	}
}

func TestAPI_Metadata(t *testing.T) {
	counter := metadata.Metadata{Type: model.MetricTypeCounter, Help: "Requests served.", Unit: ""}
	counterOld := metadata.Metadata{Type: model.MetricTypeCounter, Help: "Requests.", Unit: ""}
	gauge := metadata.Metadata{Type: model.MetricTypeGauge, Help: "Bytes in use.", Unit: "bytes"}
	c := newCluster(t, 2, newTestDB(t), newTestDB(t), newTestDB(t))
	// Replicas repeat each other; one has seen an older help text.
	c.ingesters[0].metadata = map[string][]metadata.Metadata{"http_requests_total": {counter}, "memory_bytes": {gauge}}
	c.ingesters[1].metadata = map[string][]metadata.Metadata{"http_requests_total": {counter, counterOld}}
	c.ingesters[2].metadata = map[string][]metadata.Metadata{"memory_bytes": {gauge}, "up": {{Type: model.MetricTypeGauge}}}
	census := newAPI(t, c.queryable)

	for _, tc := range []struct {
		name     string
		params   url.Values
		wantCode int
		want     string // The data, or the error of a failure.
	}{
		{
			name: "all", wantCode: http.StatusOK,
			want: `{"http_requests_total":[{"type":"counter","help":"Requests served.","unit":""},{"type":"counter","help":"Requests.","unit":""}],` +
				`"memory_bytes":[{"type":"gauge","help":"Bytes in use.","unit":"bytes"}],"up":[{"type":"gauge","help":"","unit":""}]}`,
		},
		{
			name: "one metric", params: url.Values{"metric": {"memory_bytes"}}, wantCode: http.StatusOK,
			want: `{"memory_bytes":[{"type":"gauge","help":"Bytes in use.","unit":"bytes"}]}`,
		},
		{
			name: "limit per metric", params: url.Values{"metric": {"http_requests_total"}, "limit_per_metric": {"1"}}, wantCode: http.StatusOK,
			want: `{"http_requests_total":[{"type":"counter","help":"Requests served.","unit":""}]}`,
		},
		{name: "limit 0", params: url.Values{"limit": {"0"}}, wantCode: http.StatusOK, want: `{}`},
		{name: "unknown metric", params: url.Values{"metric": {"nope"}}, wantCode: http.StatusOK, want: `{}`},
		{name: "bad limit", params: url.Values{"limit": {"many"}}, wantCode: http.StatusBadRequest, want: "limit must be a number"},
		{name: "bad limit per metric", params: url.Values{"limit_per_metric": {"x"}}, wantCode: http.StatusBadRequest, want: "limit_per_metric must be a number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := call(t, census, http.MethodGet, "/api/v1/metadata", tc.params)
			require.Equal(t, tc.wantCode, code, "body: %s", body)
			resp := decode(t, body)
			if code != http.StatusOK {
				require.Equal(t, "error", resp.Status)
				require.Equal(t, "bad_data", resp.ErrorType)
				require.Equal(t, tc.want, resp.Error)
				return
			}
			require.Equal(t, "success", resp.Status)
			require.JSONEq(t, tc.want, string(resp.Data))
		})
	}

	t.Run("limit of families", func(t *testing.T) {
		code, body := call(t, census, http.MethodGet, "/api/v1/metadata", url.Values{"limit": {"2"}})
		require.Equal(t, http.StatusOK, code)
		var got map[string][]metadata.Metadata
		require.NoError(t, json.Unmarshal(decode(t, body).Data, &got))
		require.Len(t, got, 2)
	})

	t.Run("two ingesters down of RF 2", func(t *testing.T) {
		c.ingesters[0].stop()
		c.ingesters[1].stop()
		code, body := call(t, census, http.MethodGet, "/api/v1/metadata", nil)
		require.Equal(t, http.StatusInternalServerError, code, "body: %s", body)
		resp := decode(t, body)
		require.Equal(t, "internal", resp.ErrorType)
		require.Contains(t, resp.Error, "ingester ingester-0")
		require.Contains(t, resp.Error, "ingester ingester-1")

		code, body = call(t, census, http.MethodGet, "/api/v1/metadata", url.Values{"partial_response": {"true"}})
		require.Equal(t, http.StatusOK, code, "body: %s", body)
		resp = decode(t, body)
		require.JSONEq(t, `{"memory_bytes":[{"type":"gauge","help":"Bytes in use.","unit":"bytes"}],"up":[{"type":"gauge","help":"","unit":""}]}`, string(resp.Data))
		require.Len(t, resp.Warnings, 2)
	})
}

// tsdbStatus is the data of /api/v1/status/tsdb.
type tsdbStatus struct {
	HeadStats struct {
		NumSeries     uint64 `json:"numSeries"`
		NumLabelPairs int    `json:"numLabelPairs"`
		ChunkCount    int64  `json:"chunkCount"`
		MinTime       int64  `json:"minTime"`
		MaxTime       int64  `json:"maxTime"`
	} `json:"headStats"`
	SeriesCountByMetricName     []stat `json:"seriesCountByMetricName"`
	LabelValueCountByLabelName  []stat `json:"labelValueCountByLabelName"`
	MemoryInBytesByLabelName    []stat `json:"memoryInBytesByLabelName"`
	SeriesCountByLabelValuePair []stat `json:"seriesCountByLabelValuePair"`
}

type stat struct {
	Name  string `json:"name"`
	Value uint64 `json:"value"`
}

func TestAPI_TSDBStatus(t *testing.T) {
	data := testData()
	extra := series{lset: labels.FromStrings(labels.MetricName, "up", "job", "node"), samples: []sample{{T: 0, F: 1}, {T: 15000, F: 1}}}
	all := append(append([]series{}, data...), extra)
	reference := dbWith(t, all)
	refStats := reference.Head().Stats(labels.MetricName, 10)

	for _, tc := range []struct {
		name string
		rf   int
		dbs  func() []*tsdb.DB
		// exactDistinct says that one ingester holds every label value, so
		// counts of distinct values are exact, not lower bounds.
		exactDistinct bool
	}{
		{
			name:          "three full replicas, RF 3",
			rf:            3,
			exactDistinct: true,
			dbs:           func() []*tsdb.DB { return []*tsdb.DB{dbWith(t, all), dbWith(t, all), dbWith(t, all)} },
		},
		{
			// Every series on two of three ingesters.
			name: "sharded, RF 2",
			rf:   2,
			dbs: func() []*tsdb.DB {
				return []*tsdb.DB{
					dbWith(t, append(append([]series{}, data[:7]...), extra)),
					dbWith(t, append(append([]series{}, data[:4]...), data[7:]...)),
					dbWith(t, append(append([]series{}, data[4:]...), extra)),
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dbs := tc.dbs()
			census := newAPI(t, newCluster(t, tc.rf, dbs...).queryable)
			code, body := call(t, census, http.MethodGet, "/api/v1/status/tsdb", nil)
			require.Equal(t, http.StatusOK, code, "body: %s", body)
			var got tsdbStatus
			require.NoError(t, json.Unmarshal(decode(t, body).Data, &got))

			require.Equal(t, refStats.NumSeries, got.HeadStats.NumSeries)
			require.Equal(t, refStats.MinTime, got.HeadStats.MinTime)
			require.Equal(t, refStats.MaxTime, got.HeadStats.MaxTime)
			if tc.exactDistinct {
				require.Equal(t, refStats.IndexPostingStats.NumLabelPairs, got.HeadStats.NumLabelPairs)
				require.Equal(t, []stat{{"instance", 5}, {"job", 3}, {"__name__", 2}}, got.LabelValueCountByLabelName)
			} else {
				require.LessOrEqual(t, got.HeadStats.NumLabelPairs, refStats.IndexPostingStats.NumLabelPairs)
				require.Positive(t, got.HeadStats.NumLabelPairs)
				require.Len(t, got.LabelValueCountByLabelName, 3)
			}
			var chunks int64
			for _, db := range dbs {
				chunks += chunkCount(t, db)
			}
			require.Equal(t, chunks/int64(tc.rf), got.HeadStats.ChunkCount)
			require.Equal(t, []stat{{"http_requests_total", 10}, {"up", 1}}, got.SeriesCountByMetricName)
			require.Contains(t, got.SeriesCountByLabelValuePair, stat{"__name__=http_requests_total", 10})
			require.Contains(t, got.SeriesCountByLabelValuePair, stat{"job=api", 5})
			require.Len(t, got.MemoryInBytesByLabelName, 3)
		})
	}

	t.Run("bad limit", func(t *testing.T) {
		census := newAPI(t, newCluster(t, 1, newTestDB(t)).queryable)
		code, body := call(t, census, http.MethodGet, "/api/v1/status/tsdb", url.Values{"limit": {"0"}})
		require.Equal(t, http.StatusBadRequest, code)
		require.Equal(t, "limit must be a positive number", decode(t, body).Error)
	})
}

// chunkCount counts the chunks of every series of db.
func chunkCount(t testing.TB, db *tsdb.DB) int64 {
	t.Helper()
	q, err := db.ChunkQuerier(-1<<63, 1<<63-1)
	require.NoError(t, err)
	defer q.Close()
	set := q.Select(context.Background(), false, nil, labels.MustNewMatcher(labels.MatchRegexp, labels.MetricName, ".+"))
	var n int64
	for set.Next() {
		it := set.At().Iterator(nil)
		for it.Next() {
			n++
		}
	}
	require.NoError(t, set.Err())
	return n
}

func TestAPI_Flags(t *testing.T) {
	cfg := testConfig
	cfg.Flags = map[string]string{"query.timeout": "1m", "ring.replication-factor": "3"}
	h, err := querier.NewAPI(cfg, newCluster(t, 3).queryable, testBuild, nil, prometheus.NewPedanticRegistry())
	require.NoError(t, err)
	code, body := call(t, h, http.MethodGet, "/api/v1/status/flags", nil)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"query.timeout":"1m","ring.replication-factor":"3"}`, string(decode(t, body).Data))
}

func TestAPI_PartialResponse(t *testing.T) {
	data := testData()
	c := newCluster(t, 3, dbWith(t, data), dbWith(t, data), dbWith(t, data))
	census := newAPI(t, c.queryable)
	reference := newAPI(t, dbWith(t, data))
	c.ingesters[0].stop()
	c.ingesters[2].stop()

	// Prometheus answers a storage failure of a query or a series read with
	// 500 "internal", and one of a label read with 422 "execution".
	for _, tc := range []struct {
		path      string
		params    url.Values
		wantCode  int
		wantError string
	}{
		{path: "/api/v1/query", params: url.Values{"query": {`sum by (job) (rate(http_requests_total[5m]))`}, "time": {"1800"}}, wantCode: http.StatusInternalServerError, wantError: "internal"},
		{path: "/api/v1/query_range", params: url.Values{"query": {`http_requests_total{instance="10.0.0.1:80"}`}, "start": {"0"}, "end": {"3600"}, "step": {"60"}}, wantCode: http.StatusInternalServerError, wantError: "internal"},
		{path: "/api/v1/series", params: url.Values{"match[]": {`{job="db"}`}}, wantCode: http.StatusInternalServerError, wantError: "internal"},
		{path: "/api/v1/labels", params: url.Values{"match[]": {`{job="db"}`}}, wantCode: http.StatusUnprocessableEntity, wantError: "execution"},
		{path: "/api/v1/label/instance/values", wantCode: http.StatusUnprocessableEntity, wantError: "execution"},
	} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			t.Run(tc.path+" "+method, func(t *testing.T) {
				// Two of three down with RF 3: an error naming both.
				code, body := call(t, census, method, tc.path, tc.params)
				require.Equal(t, tc.wantCode, code, "body: %s", body)
				resp := decode(t, body)
				require.Equal(t, "error", resp.Status)
				require.Equal(t, tc.wantError, resp.ErrorType)
				for _, i := range []int{0, 2} {
					require.Contains(t, resp.Error, fmt.Sprintf("ingester ingester-%d (%s)", i, c.ingesters[i].desc.Addr))
				}

				// Asked for a partial response: what the third has, which
				// here is everything, and a warning per failed ingester.
				params := url.Values{"partial_response": {"true"}}
				for k, v := range tc.params {
					params[k] = v
				}
				code, body = call(t, census, method, tc.path, params)
				require.Equal(t, http.StatusOK, code, "body: %s", body)
				_, refBody := call(t, reference, method, tc.path, tc.params)
				resp = decode(t, body)
				require.JSONEq(t, string(decode(t, refBody).Data), string(resp.Data))
				require.Len(t, resp.Warnings, 2)
				for _, w := range resp.Warnings {
					require.True(t, strings.HasPrefix(w, "partial response, series may be missing: ingester ingester-"), w)
				}
			})
		}
	}
}

// Every endpoint that reads from the ingesters answers 503 "unavailable"
// while the ring has no instance to ask, rather than an empty success that
// claims there is no data.
func TestAPI_NoIngesters(t *testing.T) {
	census := newAPI(t, newCluster(t, 3).queryable)
	for _, tc := range []struct {
		path    string
		params  url.Values
		getOnly bool // As in Prometheus.
	}{
		{path: "/api/v1/query", params: url.Values{"query": {"up"}, "time": {"10"}}},
		{path: "/api/v1/query", params: url.Values{"query": {"up"}, "time": {"10"}, "partial_response": {"true"}}},
		{path: "/api/v1/query_range", params: url.Values{"query": {"rate(up[5m])"}, "start": {"0"}, "end": {"600"}, "step": {"60"}}},
		{path: "/api/v1/series", params: url.Values{"match[]": {"up"}}},
		{path: "/api/v1/labels"},
		{path: "/api/v1/label/job/values"},
		{path: "/api/v1/metadata", getOnly: true},
		{path: "/api/v1/query_exemplars", params: url.Values{"query": {"up"}, "start": {"0"}, "end": {"60"}}},
		{path: "/api/v1/status/tsdb", getOnly: true},
	} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			if tc.getOnly && method == http.MethodPost {
				continue
			}
			t.Run(tc.path+" "+tc.params.Encode()+" "+method, func(t *testing.T) {
				code, body := call(t, census, method, tc.path, tc.params)
				require.Equal(t, http.StatusServiceUnavailable, code, "body: %s", body)
				resp := decode(t, body)
				require.Equal(t, "error", resp.Status)
				require.Equal(t, "unavailable", resp.ErrorType)
				require.Contains(t, resp.Error, querier.ErrNoIngesters.Error())
			})
		}
	}

	// Remote read, with samples and with streamed chunks: its answer is
	// protobuf, its errors are in the envelope like every other endpoint's.
	for name, typ := range map[string]prompb.ReadRequest_ResponseType{"samples": prompb.ReadRequest_SAMPLES, "streamed chunks": prompb.ReadRequest_STREAMED_XOR_CHUNKS} {
		t.Run("/api/v1/read "+name, func(t *testing.T) {
			resp := remoteRead(t, census, &prompb.ReadRequest{
				Queries:               []*prompb.Query{{StartTimestampMs: 0, EndTimestampMs: 600_000, Matchers: []*prompb.LabelMatcher{{Type: prompb.LabelMatcher_EQ, Name: "__name__", Value: "up"}}}},
				AcceptedResponseTypes: []prompb.ReadRequest_ResponseType{typ},
			})
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "body: %s", body)
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			env := decode(t, body)
			require.Equal(t, "unavailable", env.ErrorType)
			require.Contains(t, env.Error, querier.ErrNoIngesters.Error())
		})
	}
}
