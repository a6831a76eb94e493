package censuspb

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestGeneratedCodeIsCurrent regenerates the Go code from census.proto with
// the pinned plugins and fails when the committed files differ: run
// `make proto` and commit the result.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	protoc, err := exec.LookPath("protoc")
	require.NoError(t, err, "protoc is missing: install Debian's protobuf-compiler (make deps)")
	plugin := func(name string) string {
		out, err := exec.Command("go", "tool", "-n", name).Output()
		require.NoError(t, err, "go tool -n %s", name)
		return strings.TrimSpace(string(out))
	}
	dir := t.TempDir()
	cmd := exec.Command(protoc,
		"--proto_path=.",
		"--plugin=protoc-gen-go="+plugin("protoc-gen-go"),
		"--plugin=protoc-gen-go-grpc="+plugin("protoc-gen-go-grpc"),
		"--go_out="+dir, "--go_opt=paths=source_relative",
		"--go-grpc_out="+dir, "--go-grpc_opt=paths=source_relative",
		"census.proto")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "protoc: %s", out)

	for _, name := range []string{"census.pb.go", "census_grpc.pb.go"} {
		want, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(t, err)
		got, err := os.ReadFile(name)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), "%s is stale: run `make proto` and commit the result", name)
	}
}
