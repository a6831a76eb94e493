package ingester

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/index"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	censuspb "github.com/census-metrics/census/proto"
)

// incomingDir is where HandOffBlock writes a block until it is verified;
// it is inside the storage path, so the block moves into the TSDB with one
// rename on the same file system.
const incomingDir = "handoff-incoming"

// blockVisibleTimeout bounds how long HandOffBlock waits for the TSDB to
// load a block it moved into place (the TSDB reloads every
// blockReloadInterval).
const blockVisibleTimeout = 30 * time.Second

// blockReloadInterval is how often the TSDB loads blocks that appeared in
// its directory; a hand-off is acknowledged only once it did.
const blockReloadInterval = time.Second

// blockFile is the path, relative to a block's directory, of the files a
// TSDB block holds: nothing else is accepted, so a sender cannot write
// outside the block.
var blockFile = regexp.MustCompile(`^(meta\.json|index|tombstones|chunks/[0-9]{6})$`)

// HandOffBlock implements censuspb.IngesterServer: it takes a block of a
// decommissioning ingester into this ingester's TSDB (see census.proto).
// Receiving holds handOffMu for reading, so a decommission that starts
// here either refuses the block or finds it among the TSDB's blocks and
// hands it on.
func (i *Ingester) HandOffBlock(stream censuspb.Ingester_HandOffBlockServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hdr := first.GetHeader()
	id, err := checkHandOffHeader(hdr)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}

	i.handOffMu.RLock()
	defer i.handOffMu.RUnlock()
	if i.leaving.Load() {
		return status.Error(codes.FailedPrecondition, "this ingester is decommissioning: pick the owners again from the ring")
	}
	db, err := i.acquire()
	if err != nil {
		return err
	}
	defer i.release()
	if i.readOnly.Load() {
		return status.Error(codes.Unavailable, "this ingester's storage is read-only: it cannot take blocks")
	}
	if e := i.diskFull.Load(); e != nil {
		return e
	}

	start := time.Now()
	if b := loadedBlock(db, id); b != nil {
		// A resend after a lost acknowledgement.
		i.metrics.handOffReceived.WithLabelValues("duplicate").Inc()
		return stream.SendAndClose(&censuspb.HandOffBlockResponse{Series: b.Meta().Stats.NumSeries, Bytes: totalSize(hdr.GetFiles())})
	}
	tmp := filepath.Join(i.cfg.StoragePath, incomingDir, id.String())
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("clear %s: %w", tmp, err)
	}
	resp, err := i.receiveBlock(stream, first, hdr, tmp)
	if err != nil {
		_ = os.RemoveAll(tmp)
		i.metrics.handOffReceived.WithLabelValues("failed").Inc()
		return err
	}
	dst := filepath.Join(i.cfg.StoragePath, id.String())
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("move block %s into the TSDB: %w", id, i.noSpace(err))
	}
	if err := syncDir(i.cfg.StoragePath); err != nil {
		return fmt.Errorf("fsync %s: %w", i.cfg.StoragePath, err)
	}
	if err := waitLoaded(stream.Context(), db, id); err != nil {
		return err
	}
	i.metrics.handOffReceived.WithLabelValues("stored").Inc()
	i.logger.Info("Took a handed-off block", "block", id, "from", hdr.GetFrom(), "series", resp.Series, "bytes", resp.Bytes, "duration", time.Since(start))
	return stream.SendAndClose(resp)
}

// checkHandOffHeader returns the block ID of hdr, or why hdr is not a
// block's header.
func checkHandOffHeader(hdr *censuspb.HandOffBlockHeader) (ulid.ULID, error) {
	if hdr == nil {
		return ulid.ULID{}, errors.New("the first message of a hand-off must be its header")
	}
	id, err := ulid.ParseStrict(hdr.GetBlockId())
	if err != nil {
		return ulid.ULID{}, fmt.Errorf("block_id %q is not a ULID: %w", hdr.GetBlockId(), err)
	}
	var paths []string
	for _, f := range hdr.GetFiles() {
		if !blockFile.MatchString(f.GetPath()) {
			return ulid.ULID{}, fmt.Errorf("file %q is not a TSDB block file", f.GetPath())
		}
		if len(f.GetSha256()) != sha256.Size {
			return ulid.ULID{}, fmt.Errorf("file %q has no SHA-256 digest", f.GetPath())
		}
		paths = append(paths, f.GetPath())
	}
	slices.Sort(paths)
	if len(slices.Compact(paths)) != len(hdr.GetFiles()) {
		return ulid.ULID{}, errors.New("a file is listed twice")
	}
	for _, need := range []string{"meta.json", "index"} {
		if !slices.Contains(paths, need) {
			return ulid.ULID{}, fmt.Errorf("the block has no %s", need)
		}
	}
	return id, nil
}

// receiveBlock writes the files of the stream into dir, checks their sizes
// and digests against hdr, fsyncs them, and opens the block to check that
// its index holds the series its meta.json counts.
func (i *Ingester) receiveBlock(stream censuspb.Ingester_HandOffBlockServer, first *censuspb.HandOffBlockRequest, hdr *censuspb.HandOffBlockHeader, dir string) (*censuspb.HandOffBlockResponse, error) {
	files := hdr.GetFiles()
	w := &blockFileWriter{dir: dir, files: files, current: -1}
	defer w.close()
	msg := first
	for {
		if len(msg.GetData()) > 0 || msg.GetHeader() == nil {
			if err := w.write(msg.GetFile(), msg.GetData()); err != nil {
				return nil, i.noSpace(err)
			}
		}
		var err error
		msg, err = stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if err := w.finish(); err != nil {
		return nil, i.noSpace(err)
	}
	for _, sub := range []string{"chunks", ""} {
		if err := syncDir(filepath.Join(dir, sub)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("fsync %s: %w", filepath.Join(dir, sub), err)
		}
	}

	series, err := verifyBlock(dir, hdr.GetBlockId())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &censuspb.HandOffBlockResponse{Series: series, Bytes: totalSize(files)}, nil
}

// blockFileWriter writes the files of a hand-off one after the other.
type blockFileWriter struct {
	dir     string
	files   []*censuspb.HandOffFile
	current int // Index in files of the open file, -1 before the first.
	f       *os.File
	h       hash.Hash
	written uint64
}

func (w *blockFileWriter) write(file uint32, data []byte) error {
	if int(file) >= len(w.files) || int(file) < w.current {
		return status.Errorf(codes.InvalidArgument, "file %d is not the current or a later file of the header", file)
	}
	for w.current < int(file) {
		if err := w.next(); err != nil {
			return err
		}
	}
	if w.written+uint64(len(data)) > w.files[w.current].GetSize() {
		return status.Errorf(codes.InvalidArgument, "file %s is longer than its size %d in the header", w.files[w.current].GetPath(), w.files[w.current].GetSize())
	}
	if _, err := w.f.Write(data); err != nil {
		return err
	}
	w.h.Write(data)
	w.written += uint64(len(data))
	return nil
}

// next closes the current file, checked, and creates the next one.
func (w *blockFileWriter) next() error {
	if err := w.closeCurrent(); err != nil {
		return err
	}
	w.current++
	p := filepath.Join(w.dir, filepath.FromSlash(w.files[w.current].GetPath()))
	if err := os.MkdirAll(filepath.Dir(p), 0o777); err != nil {
		return err
	}
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	w.f, w.h, w.written = f, sha256.New(), 0
	return nil
}

// closeCurrent checks the open file against the header, fsyncs and closes
// it.
func (w *blockFileWriter) closeCurrent() error {
	if w.f == nil {
		return nil
	}
	want := w.files[w.current]
	f := w.f
	w.f = nil
	if w.written != want.GetSize() {
		f.Close()
		return status.Errorf(codes.InvalidArgument, "file %s has %d bytes, the header says %d", want.GetPath(), w.written, want.GetSize())
	}
	if !bytes.Equal(w.h.Sum(nil), want.GetSha256()) {
		f.Close()
		return status.Errorf(codes.InvalidArgument, "file %s does not match its SHA-256 digest", want.GetPath())
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// finish creates the files not written yet (empty ones have no data
// message) and closes the last.
func (w *blockFileWriter) finish() error {
	for w.current < len(w.files)-1 {
		if err := w.next(); err != nil {
			return err
		}
	}
	return w.closeCurrent()
}

func (w *blockFileWriter) close() {
	if w.f != nil {
		w.f.Close()
	}
}

// verifyBlock opens the block in dir and checks that it is the block id and
// that its index lists as many series as its meta.json says. It returns
// that count.
func verifyBlock(dir, id string) (uint64, error) {
	b, err := tsdb.OpenBlock(nil, dir, nil, nil)
	if err != nil {
		return 0, fmt.Errorf("open the handed-off block: %w", err)
	}
	defer b.Close()
	meta := b.Meta()
	if meta.ULID.String() != id {
		return 0, fmt.Errorf("the block's meta.json names block %s, not %s", meta.ULID, id)
	}
	ir, err := b.Index()
	if err != nil {
		return 0, fmt.Errorf("read the handed-off block's index: %w", err)
	}
	defer ir.Close()
	name, value := index.AllPostingsKey()
	p, err := ir.Postings(context.Background(), name, value)
	if err != nil {
		return 0, fmt.Errorf("read the handed-off block's postings: %w", err)
	}
	var n uint64
	for p.Next() {
		n++
	}
	if err := p.Err(); err != nil {
		return 0, fmt.Errorf("read the handed-off block's postings: %w", err)
	}
	if n != meta.Stats.NumSeries {
		return 0, fmt.Errorf("the block's index has %d series, its meta.json says %d", n, meta.Stats.NumSeries)
	}
	return n, nil
}

// loadedBlock returns the block id among db's blocks, or the block it was
// compacted into, or nil.
func loadedBlock(db *tsdb.DB, id ulid.ULID) *tsdb.Block {
	for _, b := range db.Blocks() {
		meta := b.Meta()
		if meta.ULID == id || slices.ContainsFunc(meta.Compaction.Parents, func(p tsdb.BlockDesc) bool { return p.ULID == id }) {
			return b
		}
	}
	return nil
}

// waitLoaded waits until db loaded the block id, which it does every
// blockReloadInterval.
func waitLoaded(ctx context.Context, db *tsdb.DB, id ulid.ULID) error {
	ctx, cancel := context.WithTimeout(ctx, blockVisibleTimeout)
	defer cancel()
	tick := time.NewTicker(blockReloadInterval / 10)
	defer tick.Stop()
	for loadedBlock(db, id) == nil {
		select {
		case <-ctx.Done():
			return status.Errorf(codes.Unavailable, "the TSDB did not load block %s within %s", id, blockVisibleTimeout)
		case <-tick.C:
		}
	}
	return nil
}

func totalSize(files []*censuspb.HandOffFile) uint64 {
	var n uint64
	for _, f := range files {
		n += f.GetSize()
	}
	return n
}

// syncDir fsyncs a directory, making the entries created in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// writeMeta replaces the meta.json of the block in dir with meta, durably.
func writeMeta(dir string, meta *tsdb.BlockMeta) error {
	b, err := json.MarshalIndent(meta, "", "\t")
	if err != nil {
		return err
	}
	return replaceFile(dir, "meta.json", b)
}

// readMeta reads the meta.json of the block in dir.
func readMeta(dir string) (*tsdb.BlockMeta, error) {
	b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return nil, err
	}
	var meta tsdb.BlockMeta
	if err := json.Unmarshal(b, &meta); err != nil {
		return nil, fmt.Errorf("parse %s/meta.json: %w", dir, err)
	}
	return &meta, nil
}
