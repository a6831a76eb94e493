package ring

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestReadSecretKey(t *testing.T) {
	raw16 := []byte("0123456789abcdef")
	raw32 := []byte("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\xff")
	tests := []struct {
		name    string
		content string
		want    []byte
		wantErr string
	}{
		{name: "base64 of 32 bytes with a newline", content: base64.StdEncoding.EncodeToString(raw32) + "\n", want: raw32},
		{name: "base64 of 16 bytes with a newline", content: base64.StdEncoding.EncodeToString(raw16) + "\n", want: raw16},
		{name: "base64 of 24 bytes among spaces", content: "  " + base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", 24))) + "\r\n", want: []byte(strings.Repeat("k", 24))},
		{name: "base64 of 32 bytes without a newline", content: base64.StdEncoding.EncodeToString(raw32), want: raw32},
		{name: "raw 16 bytes", content: string(raw16), want: raw16},
		{name: "raw 32 bytes", content: string(raw32), want: raw32},
		{name: "raw 32 bytes that look like base64 are raw", content: "0123456789abcdef0123456789abcdef", want: []byte("0123456789abcdef0123456789abcdef")},
		{name: "base64 of a wrong size", content: base64.StdEncoding.EncodeToString([]byte("short")), wantErr: "must hold a 16, 24 or 32-byte key, raw or base64, not 5 bytes"},
		{name: "neither", content: strings.Repeat("x", 17), wantErr: "holds 17 bytes, so it must be base64 of a 16, 24 or 32-byte key"},
		{name: "empty", content: "", wantErr: "not 0 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "key")
			require.NoError(t, os.WriteFile(path, []byte(tc.content), 0o600))
			got, err := readSecretKey(path)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
	_, err := readSecretKey(filepath.Join(t.TempDir(), "missing"))
	require.ErrorContains(t, err, "read --memberlist.secret-key-file")
}
