package artifacts

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
)

// Env is the environment an artifact was prepared in. An artifact prepared
// in one environment is never loaded in another: the cache directory is
// named by Env.Hash, and each artifact's checksum is salted with it.
type Env struct {
	Binary        string // sha256 of this binary
	Executor      string // sha256 of the executor binary that prepares and runs artifacts
	CPUFeatures   string // the CPU's feature flags, sorted, after the architecture
	KernelRelease string
	Params        string // preparation parameters the caller chooses (versions, flags)
}

// envDomain separates this hash from every other sha256 the network takes.
const envDomain = "devshard/artifacts/env/v1"

// Hash is the hex sha256 of a canonical encoding of the fields: each one
// length-prefixed, so no two different Envs encode alike.
func (e Env) Hash() string {
	h := sha256.New()
	writeField(h, envDomain)
	for _, f := range []string{e.Binary, e.Executor, e.CPUFeatures, e.KernelRelease, e.Params} {
		writeField(h, f)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// writeField writes s to w as an 8-byte big-endian length and its bytes.
func writeField(w io.Writer, s string) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(s)))
	w.Write(n[:])
	io.WriteString(w, s)
}

// CurrentEnv describes this machine: the sha256 of this binary and of
// executorBin, the CPU features and the kernel release. params is carried
// as given.
func CurrentEnv(executorBin string, params string) (Env, error) {
	self, err := os.Executable()
	if err != nil {
		return Env{}, fmt.Errorf("find this binary: %w", err)
	}
	binary, err := fileSHA256(self)
	if err != nil {
		return Env{}, fmt.Errorf("hash this binary: %w", err)
	}
	executor, err := fileSHA256(executorBin)
	if err != nil {
		return Env{}, fmt.Errorf("hash the executor binary: %w", err)
	}
	kernel, err := kernelRelease()
	if err != nil {
		return Env{}, err
	}
	return Env{Binary: binary, Executor: executor, CPUFeatures: cpuFeatures(), KernelRelease: kernel, Params: params}, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// cpuFeatures is the architecture, and on linux the feature flags of the
// first CPU in /proc/cpuinfo ("flags" on x86, "Features" on arm), sorted
// so their order in the file does not matter.
func cpuFeatures() string {
	if runtime.GOOS != "linux" {
		return runtime.GOARCH
	}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		key, value, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		if key = strings.TrimSpace(key); key != "flags" && key != "Features" {
			continue
		}
		flags := strings.Fields(value)
		slices.Sort(flags)
		return runtime.GOARCH + ":" + strings.Join(slices.Compact(flags), " ")
	}
	return runtime.GOARCH
}

func kernelRelease() (string, error) {
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	out, err := exec.Command("uname", "-r").Output()
	if err != nil {
		return "", fmt.Errorf("read the kernel release: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}
