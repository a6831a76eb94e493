package ingester_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/census-metrics/census/ingester"
	censuspb "github.com/census-metrics/census/proto"
)

// handOffCluster is a leaving ingester and the ingesters it hands off to,
// with owners decided by each series' "owner" label: a comma-separated
// list of indexes into targets.
type handOffCluster struct {
	leaver  *testIngester
	dir     string
	targets []*testIngester
	pool    *censuspb.ClientPool
	// owners, if set, replaces the "owner" label's rule.
	owners atomic.Pointer[func(labels.Labels) []int]
	leaves atomic.Int32 // Calls of SetLeaving.
}

func startHandOffCluster(t *testing.T, targets int) *handOffCluster {
	c := &handOffCluster{dir: t.TempDir(), pool: censuspb.NewClientPool()}
	t.Cleanup(func() { require.NoError(t, c.pool.Close()) })
	c.leaver = startIngester(t, c.dir)
	for range targets {
		c.targets = append(c.targets, startIngester(t, t.TempDir()))
	}
	return c
}

func (c *handOffCluster) config() ingester.HandOffConfig {
	return ingester.HandOffConfig{
		Self: "leaver",
		Owners: func(ls labels.Labels, buf []ingester.Target) ([]ingester.Target, error) {
			var idx []int
			if f := c.owners.Load(); f != nil {
				idx = (*f)(ls)
			} else {
				for _, o := range ls.Get("owner") {
					if o != ',' {
						idx = append(idx, int(o-'0'))
					}
				}
			}
			for _, i := range idx {
				buf = append(buf, ingester.Target{ID: fmt.Sprintf("target-%d", i), Addr: c.targets[i].addr})
			}
			return buf, nil
		},
		Client:     c.pool.Get,
		SetLeaving: func(context.Context) error { c.leaves.Add(1); return nil },
	}
}

// decommission hands the leaver's series off and waits until it has.
func (c *handOffCluster) decommission(t *testing.T) *ingester.Decommission {
	t.Helper()
	d, err := ingester.NewDecommission(c.leaver.ing, c.config(), nil)
	require.NoError(t, err)
	require.False(t, d.Resume())
	d.Start()
	select {
	case <-d.Done():
	case <-time.After(60 * time.Second):
		t.Fatalf("decommission not done within 60s: %+v", d.Progress())
	}
	return d
}

func TestDecommission_HandsEverySeriesToItsOwners(t *testing.T) {
	c := startHandOffCluster(t, 3)
	// Series owned by target 0, 1, both 0 and 2, and all three, with
	// 200 samples each, so that they span two chunks.
	owners := []string{"0", "1", "0,2", "0,1,2"}
	want := map[string][]sample{}
	ownerOf := map[string]string{}
	for n := range 40 {
		owner := owners[n%len(owners)]
		ls := pairs("__name__", "handoff_test", "n", fmt.Sprint(n), "owner", owner)
		ss := linear(1_000_000, 15_000, 200)
		push(t, c.leaver.client, series(ls, ss...))
		want[censuspb.FormatLabelPairs(ls)] = ss
		ownerOf[censuspb.FormatLabelPairs(ls)] = owner
	}

	d := c.decommission(t)
	require.Equal(t, int32(1), c.leaves.Load(), "the leaver turned LEAVING in the ring once")

	for i, target := range c.targets {
		got, _ := queryStream(t, target.client, 0, 1<<62, labels.MustNewMatcher(labels.MatchEqual, "__name__", "handoff_test"))
		var names []string
		for _, s := range got {
			names = append(names, s.Labels)
			require.Equal(t, want[s.Labels], s.Samples, "samples of %s on target %d", s.Labels, i)
		}
		var wantNames []string
		for name := range want {
			if slices.Contains([]byte(ownerOf[name]), byte('0'+i)) {
				wantNames = append(wantNames, name)
			}
		}
		require.ElementsMatch(t, wantNames, names, "series on target %d", i)
	}

	p := d.Progress()
	require.Equal(t, "handed-off", p.State)
	require.Equal(t, p.Blocks, p.BlocksDone)
	require.Equal(t, p.Bytes, p.BytesDone)
	require.Equal(t, uint64(30), p.Targets["target-0"].SeriesAcked, "target 0 owns three of every four series")
	require.Equal(t, uint64(20), p.Targets["target-1"].SeriesAcked)
	require.Equal(t, uint64(20), p.Targets["target-2"].SeriesAcked)
	for id, tp := range p.Targets {
		require.Equal(t, tp.BytesSent, tp.BytesAcked, "bytes of %s", id)
	}

	// The leaver takes no push any more, so nothing lands where it is lost.
	_, err := c.leaver.client.Push(context.Background(), &censuspb.PushRequest{Series: []*censuspb.TimeSeries{
		series(pairs("__name__", "late", "owner", "0"), sample{T: 2_000_000_000, V: 1}),
	}})
	require.Equal(t, codes.Unavailable, status.Code(err), "push to a decommissioned ingester: %v", err)

	// RemoveData empties the volume once the process is done with it.
	c.leaver.stop()
	require.NoError(t, ingester.RemoveData(c.dir))
	entries, err := os.ReadDir(c.dir)
	require.NoError(t, err)
	require.Empty(t, entries)
}

// A target that is decommissioning itself refuses blocks; the leaver asks
// for the owners again until it finds one that takes them.
func TestDecommission_RetriesWhenATargetIsLeaving(t *testing.T) {
	c := startHandOffCluster(t, 2)
	for n := range 10 {
		push(t, c.leaver.client, series(pairs("__name__", "retry_test", "n", fmt.Sprint(n)), linear(1_000, 1_000, 50)...))
	}
	// Target 1 is leaving too: it refuses every block.
	other, err := ingester.NewDecommission(c.targets[1].ing, ingester.HandOffConfig{
		Self:       "target-1",
		Owners:     func(_ labels.Labels, buf []ingester.Target) ([]ingester.Target, error) { return buf, nil },
		Client:     c.pool.Get,
		SetLeaving: func(context.Context) error { return nil },
	}, nil)
	require.NoError(t, err)
	other.Start()
	require.Eventually(t, func() bool { return other.Progress().State == "handing-off" }, 10*time.Second, 10*time.Millisecond)

	var asked atomic.Int32
	owners := func(labels.Labels) []int {
		// The first views of the ring still list target 1.
		if asked.Add(1) <= 10 {
			return []int{1}
		}
		return []int{0}
	}
	c.owners.Store(&owners)
	d := c.decommission(t)

	got, _ := queryStream(t, c.targets[0].client, 0, 1<<62, labels.MustNewMatcher(labels.MatchEqual, "__name__", "retry_test"))
	require.Len(t, got, 10)
	for _, s := range got {
		require.Equal(t, linear(1_000, 1_000, 50), s.Samples)
	}
	p := d.Progress()
	require.Positive(t, p.Targets["target-1"].Failures, "target 1 refused")
	require.Zero(t, p.Targets["target-1"].SeriesAcked)
	require.Equal(t, uint64(10), p.Targets["target-0"].SeriesAcked)
}

// When the ring changes between two attempts at a block, a target that
// took its part of the block may own more of its series than before: it is
// sent its new part, though the journal lists its old one.
func TestDecommission_SendsATargetItsNewPartWhenTheRingChanges(t *testing.T) {
	c := startHandOffCluster(t, 2)
	for n := range 10 {
		push(t, c.leaver.client, series(pairs("__name__", "replan_test", "n", fmt.Sprint(n)), linear(1_000, 1_000, 50)...))
	}
	other, err := ingester.NewDecommission(c.targets[1].ing, ingester.HandOffConfig{
		Self:       "target-1",
		Owners:     func(_ labels.Labels, buf []ingester.Target) ([]ingester.Target, error) { return buf, nil },
		Client:     c.pool.Get,
		SetLeaving: func(context.Context) error { return nil },
	}, nil)
	require.NoError(t, err)
	other.Start()
	require.Eventually(t, func() bool { return other.Progress().State == "handing-off" }, 10*time.Second, 10*time.Millisecond)

	// The first view of the ring (the one block's ten series) gives the odd
	// series to target 0 and the even ones to target 1, which refuses; the
	// next gives target 0 every series.
	var asked atomic.Int32
	owners := func(ls labels.Labels) []int {
		var n int
		_, _ = fmt.Sscan(ls.Get("n"), &n)
		if asked.Add(1) <= 10 && n%2 == 0 {
			return []int{1}
		}
		return []int{0}
	}
	c.owners.Store(&owners)
	c.decommission(t)

	got, _ := queryStream(t, c.targets[0].client, 0, 1<<62, labels.MustNewMatcher(labels.MatchEqual, "__name__", "replan_test"))
	require.Len(t, got, 10, "target 0 has every series, the ones it took in the first attempt and the ones target 1 refused")
	for _, s := range got {
		require.Equal(t, linear(1_000, 1_000, 50), s.Samples, "samples of %s", s.Labels)
	}
}

// GET reports the progress and POST starts the decommission, once.
func TestDecommission_HTTP(t *testing.T) {
	c := startHandOffCluster(t, 1)
	push(t, c.leaver.client, series(pairs("__name__", "http_test", "owner", "0"), linear(1_000, 1_000, 10)...))
	d, err := ingester.NewDecommission(c.leaver.ing, c.config(), nil)
	require.NoError(t, err)
	srv := httptest.NewServer(d)
	defer srv.Close()

	progress := func(method string, wantCode int) ingester.DecommissionProgress {
		req, err := http.NewRequest(method, srv.URL, nil)
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, wantCode, resp.StatusCode)
		var p ingester.DecommissionProgress
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&p))
		return p
	}
	require.Equal(t, "idle", progress(http.MethodGet, http.StatusOK).State)
	progress(http.MethodPost, http.StatusAccepted)
	progress(http.MethodPost, http.StatusAccepted)
	<-d.Done()
	p := progress(http.MethodGet, http.StatusOK)
	require.Equal(t, "handed-off", p.State)
	require.Equal(t, uint64(1), p.Targets["target-0"].SeriesAcked)
	require.Equal(t, int32(1), c.leaves.Load(), "a second POST starts nothing")

	req, err := http.NewRequest(http.MethodDelete, srv.URL, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
}

// A volume whose decommission handed everything off but was killed before
// it was emptied is emptied at the next start; one killed while handing
// off resumes.
func TestDecommission_StateOnTheVolume(t *testing.T) {
	for _, tc := range []struct {
		state      string
		wantResume bool
	}{
		{state: "handed-off", wantResume: false},
		{state: "handing-off", wantResume: true},
	} {
		t.Run(tc.state, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.MkdirAll(filepath.Join(dir, "decommission"), 0o777))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "decommission", "state.json"), []byte(`{"state":"`+tc.state+`","started":"2026-12-02T10:00:00Z"}`), 0o666))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "ring-tokens.json"), []byte(`[1,2,3]`), 0o666))
			ing, err := ingester.New(testConfig(dir), nil, nil)
			require.NoError(t, err)
			d, err := ingester.NewDecommission(ing, ingester.HandOffConfig{}, nil)
			require.NoError(t, err)
			require.Equal(t, tc.wantResume, d.Resume())
			_, err = os.Stat(filepath.Join(dir, "ring-tokens.json"))
			require.Equal(t, tc.wantResume, err == nil, "tokens kept only to resume: %v", err)
		})
	}
}

// HandOffBlock refuses what is not a whole, intact block, and keeps nothing
// of it.
func TestHandOffBlock_RefusesBadBlocks(t *testing.T) {
	dir := t.TempDir()
	target := startIngester(t, dir)
	meta := []byte(`{"ulid":"01JQ0000000000000000000000","minTime":0,"maxTime":1,"version":1}`)
	digest := sha256.Sum256(meta)
	file := func(path string, size int, sum []byte) *censuspb.HandOffFile {
		return &censuspb.HandOffFile{Path: path, Size: uint64(size), Sha256: sum}
	}
	for _, tc := range []struct {
		name   string
		header *censuspb.HandOffBlockHeader
		data   []*censuspb.HandOffBlockRequest
		want   string
	}{
		{name: "no header", want: "header"},
		{name: "not a ULID", header: &censuspb.HandOffBlockHeader{BlockId: "x"}, want: "not a ULID"},
		{
			name:   "a path outside the block",
			header: &censuspb.HandOffBlockHeader{BlockId: "01JQ0000000000000000000000", Files: []*censuspb.HandOffFile{file("../../etc/passwd", 1, digest[:])}},
			want:   "not a TSDB block file",
		},
		{
			name:   "no index",
			header: &censuspb.HandOffBlockHeader{BlockId: "01JQ0000000000000000000000", Files: []*censuspb.HandOffFile{file("meta.json", len(meta), digest[:])}},
			want:   "no index",
		},
		{
			name: "a digest that does not match",
			header: &censuspb.HandOffBlockHeader{BlockId: "01JQ0000000000000000000000", Files: []*censuspb.HandOffFile{
				file("meta.json", len(meta), make([]byte, 32)), file("index", 0, digest[:]),
			}},
			data: []*censuspb.HandOffBlockRequest{{File: 0, Data: meta}},
			want: "SHA-256",
		},
		{
			name: "more bytes than the header says",
			header: &censuspb.HandOffBlockHeader{BlockId: "01JQ0000000000000000000000", Files: []*censuspb.HandOffFile{
				file("meta.json", 3, digest[:]), file("index", 0, digest[:]),
			}},
			data: []*censuspb.HandOffBlockRequest{{File: 0, Data: meta}},
			want: "longer than its size",
		},
		{
			name: "not a block",
			header: &censuspb.HandOffBlockHeader{BlockId: "01JQ0000000000000000000000", Files: []*censuspb.HandOffFile{
				file("meta.json", len(meta), digest[:]), file("index", 0, sha256.New().Sum(nil)),
			}},
			data: []*censuspb.HandOffBlockRequest{{File: 0, Data: meta}},
			want: "open the handed-off block",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := target.client.HandOffBlock(context.Background())
			require.NoError(t, err)
			msgs := append([]*censuspb.HandOffBlockRequest{{Header: tc.header}}, tc.data...)
			if tc.header == nil {
				msgs = []*censuspb.HandOffBlockRequest{{File: 0, Data: []byte("x")}}
			}
			for _, m := range msgs {
				if err := stream.Send(m); err != nil {
					break
				}
			}
			_, err = stream.CloseAndRecv()
			require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
			require.ErrorContains(t, err, tc.want)
			entries, err := os.ReadDir(filepath.Join(dir, "handoff-incoming"))
			if err == nil {
				require.Empty(t, entries, "nothing of a refused block is kept")
			}
		})
	}
}
