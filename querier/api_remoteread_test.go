package querier_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/golang/snappy"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/stretchr/testify/require"
)

// remoteRead sends req to the remote read endpoint of h, as another
// Prometheus does, and returns the HTTP response.
func remoteRead(t testing.TB, h http.Handler, req *prompb.ReadRequest) *http.Response {
	t.Helper()
	b, err := req.Marshal()
	require.NoError(t, err)
	httpReq := httptest.NewRequest(http.MethodPost, "/api/v1/read", bytes.NewReader(snappy.Encode(nil, b)))
	httpReq.Header.Set("Content-Encoding", "snappy")
	httpReq.Header.Set("Content-Type", "application/x-protobuf")
	httpReq.Header.Set("X-Prometheus-Remote-Read-Version", "0.1.0")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httpReq)
	return rec.Result()
}

func TestAPI_RemoteRead(t *testing.T) {
	data := testData()
	census := newAPI(t, newCluster(t, 3, replicaDBs(t, data)...).queryable)
	reference := newAPI(t, dbWith(t, data))
	queries := []*prompb.Query{
		{
			StartTimestampMs: 600_000, EndTimestampMs: 1_200_000,
			Matchers: []*prompb.LabelMatcher{{Type: prompb.LabelMatcher_EQ, Name: "__name__", Value: "http_requests_total"}, {Type: prompb.LabelMatcher_EQ, Name: "job", Value: "api"}},
		},
		{
			StartTimestampMs: 0, EndTimestampMs: 3_600_000,
			Matchers: []*prompb.LabelMatcher{{Type: prompb.LabelMatcher_RE, Name: "instance", Value: "10.0.0.[12]:80"}},
		},
	}

	t.Run("samples", func(t *testing.T) {
		req := &prompb.ReadRequest{Queries: queries, AcceptedResponseTypes: []prompb.ReadRequest_ResponseType{prompb.ReadRequest_SAMPLES}}
		read := func(h http.Handler) *prompb.ReadResponse {
			resp := remoteRead(t, h, req)
			defer resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			raw, err := snappy.Decode(nil, body)
			require.NoError(t, err)
			var rr prompb.ReadResponse
			require.NoError(t, rr.Unmarshal(raw))
			return &rr
		}
		got := read(census)
		require.Len(t, got.Results, 2)
		require.Len(t, got.Results[0].Timeseries, 5)
		require.Len(t, got.Results[1].Timeseries, 4)
		require.Len(t, got.Results[0].Timeseries[0].Samples, 41) // 10m to 20m every 15s.
		require.Equal(t, read(reference), got)
	})

	t.Run("streamed chunks", func(t *testing.T) {
		req := &prompb.ReadRequest{Queries: queries, AcceptedResponseTypes: []prompb.ReadRequest_ResponseType{prompb.ReadRequest_STREAMED_XOR_CHUNKS}}
		// read returns, per query, the samples of each series in the order
		// they were streamed: replicas that differ are re-encoded, so only
		// the samples, not the chunk bytes, must equal Prometheus'.
		read := func(h http.Handler) map[int64][]series {
			resp := remoteRead(t, h, req)
			defer resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Equal(t, "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse", resp.Header.Get("Content-Type"))
			out := map[int64][]series{}
			cr := remote.NewChunkedReader(resp.Body, 50<<20, nil)
			for {
				var frame prompb.ChunkedReadResponse
				err := cr.NextProto(&frame)
				if errors.Is(err, io.EOF) {
					return out
				}
				require.NoError(t, err)
				for _, cs := range frame.ChunkedSeries {
					s := series{}
					for _, l := range cs.Labels {
						s.lset = appendLabel(s.lset, l.Name, l.Value)
					}
					for _, c := range cs.Chunks {
						chk, err := chunkenc.FromData(chunkenc.Encoding(c.Type), c.Data)
						require.NoError(t, err)
						it := chk.Iterator(nil)
						for it.Next() == chunkenc.ValFloat {
							ts, f := it.At()
							s.samples = append(s.samples, sample{T: ts, F: f})
						}
						require.NoError(t, it.Err())
					}
					out[frame.QueryIndex] = append(out[frame.QueryIndex], s)
				}
			}
		}
		got := read(census)
		require.Len(t, got[0], 5)
		require.Len(t, got[1], 4)
		want := read(reference)
		for q := range want {
			require.Len(t, got[q], len(want[q]))
			for i := range want[q] {
				require.Equal(t, want[q][i].lset, got[q][i].lset)
				// Whole chunks may reach beyond the range in either answer,
				// but within it the samples are the same.
				query := queries[q]
				require.Equal(t,
					filter(want[q][i:i+1], query.StartTimestampMs, query.EndTimestampMs),
					filter(got[q][i:i+1], query.StartTimestampMs, query.EndTimestampMs))
			}
		}
	})
}

// appendLabel adds name=value to ls, which is built in order.
func appendLabel(ls labels.Labels, name, value string) labels.Labels {
	b := labels.NewBuilder(ls)
	b.Set(name, value)
	return b.Labels()
}
