package ingester

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/tsdb/wlog"
	"github.com/stretchr/testify/require"
)

func TestWALSyncer(t *testing.T) {
	dir := t.TempDir()
	wal := filepath.Join(dir, "wal")
	require.NoError(t, os.Mkdir(wal, 0o777))
	createSegment := func(k int) {
		t.Helper()
		require.NoError(t, os.WriteFile(wlog.SegmentName(wal, k), []byte("records"), 0o666))
	}
	createSegment(0)
	fsyncs := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fsyncs"})
	rounds := func() uint64 {
		var m dto.Metric
		require.NoError(t, fsyncs.Write(&m))
		return m.GetHistogram().GetSampleCount()
	}
	// The WBL directory does not exist until the first out-of-order sample.
	s := newWALSyncer([]string{wal, filepath.Join(dir, wlog.WblDirName)}, fsyncs)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.run(stop)
	}()
	ctx := context.Background()

	// Concurrent callers share rounds: never more rounds than callers.
	const callers = 50
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Go(func() { errs <- s.sync(ctx) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.GreaterOrEqual(t, rounds(), uint64(1))
	require.LessOrEqual(t, rounds(), uint64(callers))
	require.Equal(t, 0, s.synced[wal].index, "the newest segment stays open for the next round")

	// New segments: the next round fsyncs every one since the last round's
	// newest, and keeps the newest open.
	createSegment(1)
	createSegment(2)
	require.NoError(t, s.sync(ctx))
	require.Equal(t, 2, s.synced[wal].index)

	// Segments the TSDB truncated meanwhile are skipped.
	require.NoError(t, os.Remove(wlog.SegmentName(wal, 0)))
	require.NoError(t, os.Remove(wlog.SegmentName(wal, 1)))
	createSegment(3)
	require.NoError(t, s.sync(ctx))
	require.Equal(t, 3, s.synced[wal].index)

	close(stop)
	<-done
	require.ErrorIs(t, s.sync(ctx), errClosed)
}

func TestIngester_ReadyReportsReplay(t *testing.T) {
	var cfg Config
	cfg.RegisterFlags(flag.NewFlagSet("test", flag.PanicOnError))
	cfg.StoragePath = t.TempDir()
	cfg.Limits.MaxSeries = 1000
	i, err := New(cfg, nil, nil)
	require.NoError(t, err)
	require.EqualError(t, i.Ready(), "ingester is starting: not running yet")

	// What Run shows while tsdb.Open loads the head, then replays
	// segments 4 to 13.
	i.started.Store(true)
	require.EqualError(t, i.Ready(), "ingester is starting: opening the TSDB")
	i.walSegments.Store(10)
	require.EqualError(t, i.Ready(), "ingester is starting: loading the head's chunks, then replaying 10 WAL segments")
	st := i.replay.Head.WALReplayStatus
	st.Lock()
	st.Min, st.Max, st.Current = 4, 13, 6
	st.Unlock()
	require.EqualError(t, i.Ready(), "ingester is starting: replaying WAL: segment 3 of 10")
	_, err = i.acquire()
	require.ErrorIs(t, err, errStarting)
}
