package localnet

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	rpchttp "github.com/cometbft/cometbft/rpc/client/http"
	coretypes "github.com/cometbft/cometbft/rpc/core/types"

	"github.com/devshard/devshard/chain/node"
)

// Node is one `devshard chain start` process of the network.
type Node struct {
	Name string
	Home string
	// NodeID is the node's P2P id.
	NodeID string
	// RPCAddress is CometBFT's RPC (tcp://127.0.0.1:port).
	RPCAddress string
	// GRPCAddress is the app's gRPC server (127.0.0.1:port).
	GRPCAddress string
	// APIAddress is the REST server (http://127.0.0.1:port).
	APIAddress string
	// P2PAddress is the node as a peer: id@127.0.0.1:port.
	P2PAddress string
	// Validator says whether the node is one of the genesis validators;
	// Operator is then its funded operator account.
	Validator bool
	Operator  node.Account
	// LogPath is where the process's output goes.
	LogPath string

	binary string
	// invCheckPeriod is --inv-check-period: 1 checks the invariants
	// every block, 0 never.
	invCheckPeriod int
	rpc            *rpchttp.HTTP

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the current process exits
	exitErr error
}

// stopTimeout is how long Stop waits for a node to exit after SIGTERM
// before it kills it.
const stopTimeout = 15 * time.Second

func (n *Network) newNode(nr nodeRecord) (*Node, error) {
	home := n.home(nr.Name)
	nd := &Node{
		Name: nr.Name, Home: home, NodeID: nr.NodeID,
		RPCAddress:  fmt.Sprintf("tcp://127.0.0.1:%d", nr.Ports.RPC),
		GRPCAddress: nr.grpcAddress(),
		APIAddress:  fmt.Sprintf("http://127.0.0.1:%d", nr.Ports.API),
		P2PAddress:  nr.p2pAddress(),
		Validator:   nr.Validator,
		LogPath:     filepath.Join(home, "node.log"),
		binary:      n.binary,
	}
	if !n.skipInvariants {
		// The network checks its books every block, as chain/node does.
		nd.invCheckPeriod = 1
	}
	if nr.Operator != nil {
		op, err := nr.Operator.account()
		if err != nil {
			return nil, err
		}
		nd.Operator = op
	}
	var err error
	if nd.rpc, err = rpchttp.New(nd.RPCAddress, "/websocket"); err != nil {
		return nil, err
	}
	return nd, nil
}

// Start runs the node's process, with its output appended to LogPath. It
// does not wait for the node to answer.
func (nd *Node) Start() error {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.runningLocked() {
		return fmt.Errorf("%s is already running", nd.Name)
	}
	logf, err := os.OpenFile(nd.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(nd.binary, "chain", "start", "--home", nd.Home, "--inv-check-period", strconv.Itoa(nd.invCheckPeriod), "--log_no_color")
	cmd.Stdout, cmd.Stderr = logf, logf
	// A node never outlives the process that started it, even one that
	// dies without calling Close.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s: starting %s: %w", nd.Name, nd.binary, err)
	}
	nd.cmd = cmd
	exited := make(chan struct{})
	nd.exited = exited
	go func() {
		err := cmd.Wait()
		logf.Close()
		nd.mu.Lock()
		nd.exitErr = err
		nd.mu.Unlock()
		close(exited)
	}()
	return nil
}

// Kill ends the process with SIGKILL, as a crash would, and waits for it.
func (nd *Node) Kill() { nd.signal(context.Background(), syscall.SIGKILL) }

// Stop ends the process with SIGTERM, a clean shutdown, and waits for it;
// one still running after stopTimeout is killed.
func (nd *Node) Stop() { nd.stop(context.Background()) }

// stop is Stop, killing the process when ctx ends too.
func (nd *Node) stop(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, stopTimeout)
	defer cancel()
	nd.signal(ctx, syscall.SIGTERM)
}

// signal sends sig to the process and waits for it to exit, killing it if
// ctx ends first.
func (nd *Node) signal(ctx context.Context, sig syscall.Signal) {
	nd.mu.Lock()
	cmd, exited := nd.cmd, nd.exited
	nd.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-exited
	}
}

// Running reports whether the node's process is alive.
func (nd *Node) Running() bool {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.runningLocked()
}

func (nd *Node) runningLocked() bool {
	if nd.exited == nil {
		return false
	}
	select {
	case <-nd.exited:
		return false
	default:
		return true
	}
}

// Height is the latest block height the node's app has committed.
func (nd *Node) Height(ctx context.Context) (int64, error) {
	res, err := nd.rpc.ABCIInfo(ctx)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", nd.Name, err)
	}
	return res.Response.LastBlockHeight, nil
}

// WaitForHeight returns once the node has committed height h. It fails
// at once if the process exits, with the end of its log.
func (nd *Node) WaitForHeight(ctx context.Context, h int64) error {
	return waitFor(ctx, h, func(ctx context.Context) (int64, error) {
		if !nd.Running() {
			return 0, nd.exitError()
		}
		return nd.Height(ctx)
	})
}

// exitError says that the process is not running, and why, if it exited.
func (nd *Node) exitError() error {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.exited == nil {
		return fmt.Errorf("%s was never started", nd.Name)
	}
	return fmt.Errorf("%s exited (%v); the end of %s:\n%s", nd.Name, nd.exitErr, nd.LogPath, logTail(nd.LogPath, 20))
}

// Status is the node's CometBFT status: its sync state, the heights its
// block store holds, its validator key.
func (nd *Node) Status(ctx context.Context) (*coretypes.ResultStatus, error) {
	res, err := nd.rpc.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", nd.Name, err)
	}
	return res, nil
}

// AppHash is the app hash the node holds after block height: the one the
// header of block height+1 carries. So height+1 must be committed.
func (nd *Node) AppHash(ctx context.Context, height int64) ([]byte, error) {
	next := height + 1
	res, err := nd.rpc.Header(ctx, &next)
	if err != nil {
		return nil, fmt.Errorf("%s: the header of block %d: %w", nd.Name, next, err)
	}
	if res.Header == nil {
		return nil, fmt.Errorf("%s has no block %d", nd.Name, next)
	}
	return res.Header.AppHash, nil
}

// logTail is the last n lines of the file at path, or why it cannot be
// read.
func logTail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
