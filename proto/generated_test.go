package censuspb

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestGeneratedCodeIsCurrent regenerates the Go code from census.proto the
// way `make proto` does (protogen: a Go-native compiler and the plugins
// pinned in go.mod, so no protoc and no network) and fails when the
// committed files differ.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command("go", "run", "./internal/protogen", "-out="+dir, "census.proto").CombinedOutput()
	require.NoError(t, err, "protogen: %s", out)

	for _, name := range []string{"census.pb.go", "census_grpc.pb.go"} {
		want, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(t, err)
		got, err := os.ReadFile(name)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got),
			"%s differs from what census.proto generates: run `make proto` and commit the result", name)
	}
}
