// Command protogen compiles a .proto file with bufbuild/protocompile and runs
// the protoc-gen-go and protoc-gen-go-grpc plugins pinned as tools in go.mod
// on it, writing their Go files. It stands in for protoc, so generating the
// code, and the test that checks it is current, need only Go: no system
// package. `make proto` runs it; TestGeneratedCodeIsCurrent runs it into a
// temporary folder.
//
// Usage:
//
//	go run ./proto/internal/protogen -out=proto proto/census.proto
//
// The plugins get paths=source_relative, so each Go file lands in -out under
// the name of its .proto file relative to that file's folder.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/bufbuild/protocompile"
	"github.com/bufbuild/protocompile/protoutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"
)

// plugins are the go.mod tools run on the compiled file, in order.
var plugins = []string{"protoc-gen-go", "protoc-gen-go-grpc"}

func main() {
	out := flag.String("out", ".", "folder the generated Go files are written to")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: protogen -out=<folder> <file.proto>")
		os.Exit(2)
	}
	if err := run(context.Background(), flag.Arg(0), *out); err != nil {
		fmt.Fprintln(os.Stderr, "protogen:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, protoPath, out string) error {
	req, err := request(ctx, protoPath)
	if err != nil {
		return err
	}
	for _, name := range plugins {
		files, err := runPlugin(ctx, name, req)
		if err != nil {
			return err
		}
		for _, f := range files {
			path := filepath.Join(out, filepath.FromSlash(f.GetName()))
			if err := os.WriteFile(path, []byte(f.GetContent()), 0o644); err != nil {
				return fmt.Errorf("write %s output: %w", name, err)
			}
		}
	}
	return nil
}

// request compiles the file at protoPath, with its folder as the only
// import path and the well-known types available, into the request protoc
// would send a plugin.
func request(ctx context.Context, protoPath string) (*pluginpb.CodeGeneratorRequest, error) {
	dir, name := filepath.Split(protoPath)
	c := protocompile.Compiler{
		Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{
			ImportPaths: []string{filepath.Clean(dir)},
		}),
		// The plugins copy comments into the Go code from source info.
		SourceInfoMode: protocompile.SourceInfoStandard,
	}
	files, err := c.Compile(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("compile %s: %w", protoPath, err)
	}
	req := &pluginpb.CodeGeneratorRequest{
		FileToGenerate: []string{name},
		Parameter:      proto.String("paths=source_relative"),
	}
	seen := map[string]bool{}
	for _, f := range files {
		req.ProtoFile = appendWithDeps(req.ProtoFile, f, seen)
	}
	return req, nil
}

// appendWithDeps appends f's descriptor after those of its imports, each
// once: plugins want every file after the files it imports.
func appendWithDeps(dst []*descriptorpb.FileDescriptorProto, f protoreflect.FileDescriptor, seen map[string]bool) []*descriptorpb.FileDescriptorProto {
	if seen[f.Path()] {
		return dst
	}
	seen[f.Path()] = true
	imports := f.Imports()
	for i := range imports.Len() {
		dst = appendWithDeps(dst, imports.Get(i).FileDescriptor, seen)
	}
	return append(dst, protoutil.ProtoFromFileDescriptor(f))
}

// runPlugin runs the go.mod tool name on req over stdin and stdout, as
// protoc runs a plugin, and returns the files it generated.
func runPlugin(ctx context.Context, name string, req *pluginpb.CodeGeneratorRequest) ([]*pluginpb.CodeGeneratorResponse_File, error) {
	in, err := proto.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("marshal request for %s: %w", name, err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "go", "tool", name)
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("run %s: %w: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	var resp pluginpb.CodeGeneratorResponse
	if err := proto.Unmarshal(stdout.Bytes(), &resp); err != nil {
		return nil, fmt.Errorf("read %s response: %w", name, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("%s: %s", name, resp.GetError())
	}
	for _, f := range resp.File {
		if f.GetInsertionPoint() != "" {
			return nil, fmt.Errorf("%s: insertion point %q in %s is not supported", name, f.GetInsertionPoint(), f.GetName())
		}
	}
	return resp.File, nil
}
