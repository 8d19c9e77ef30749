// Package chainload loads a network of validators (chain/localnet) with
// escrow settlements and measures the blocks that carry them. It registers
// hosts, opens escrows whose groups the chain draws, builds a real
// settlement of each offline (an honest session of two inferences, signed
// by every slot), broadcasts them all at once over the validators and then
// reads, block by block, how many settlements each carried, how long after
// the previous block it came and how long it took to execute, and how much
// CPU time the validators spent per settlement.
package chainload

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	rpchttp "github.com/cometbft/cometbft/rpc/client/http"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/localnet"
	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Config is one load run.
type Config struct {
	// Home is where the network lives; Binary is the devshard executable
	// its validators run.
	Home, Binary string
	Validators   int
	// BlockTime is the network's target block interval (CometBFT's
	// timeout_commit).
	BlockTime time.Duration
	// EpochLength is in blocks. Hosts register in epoch 1; escrows open
	// in epoch 2, at block EpochLength+1, so a short epoch starts the load
	// sooner. Escrows stay open for 10 epochs.
	EpochLength int64
	// GroupSize is the slots of every escrow's group, drawn from Hosts
	// hosts of equal collateral.
	GroupSize, Hosts int
	// Gateways create the escrows and send their settlements, each its
	// own run of sequence numbers to one validator.
	Gateways int
	// Settlements is how many settlements are broadcast at once.
	Settlements int
	// PerTx is the most settlements a tx carries, as a gateway's chain
	// client puts them together when many are due at once
	// (chainclient.MaxSettlementsPerTx); 1 sends each in a tx of its own.
	PerTx int
	// Idle is how long the idle block rate is measured, before any load.
	Idle time.Duration
	// CheckInvariants makes the validators check the chain's invariants
	// every block (--inv-check-period 1), as test networks do; otherwise
	// they run as an operator's validators do by default, checking none.
	CheckInvariants bool
	// Progress is told each step.
	Progress func(format string, args ...any)
}

// Block is one block of the load.
type Block struct {
	Height int64
	// Settlements succeeded in the block; Failed were included and
	// failed.
	Settlements, Failed int
	// Interval is from the previous block's commit to this one's, as the
	// first validator's app saw them: it holds proposing, agreeing on and
	// executing this block.
	Interval time.Duration
	// HeaderInterval is the same between the blocks' header times (the
	// validators' median clock when they voted on the block before).
	HeaderInterval time.Duration
	// Exec is from the first validator deciding the block (its block
	// store holding it) to its app having committed it: executing the
	// block's txs and writing the state. CometBFT waits the block time
	// from the decision before it proposes the next block, so a block
	// whose Exec is within the block time does not slow the chain.
	Exec time.Duration
}

// Result is what one run measured.
type Result struct {
	Validators int
	// IdleBlocks blocks were committed in IdleSpan with no tx sent.
	IdleBlocks int
	IdleSpan   time.Duration
	// IdleExec is the mean Exec of the idle blocks.
	IdleExec time.Duration
	// IdleCPU is the CPU time all the validators used in IdleSpan;
	// LoadCPU what they used in LoadWall, from the broadcast's start to
	// the commit of the last block that carried a settlement.
	IdleCPU, LoadCPU, LoadWall time.Duration
	// Blocks run from the first block carrying a settlement to the last,
	// empty ones between included.
	Blocks []Block
	// Broadcast is how long sending every settlement took; Rejected were
	// refused at CheckTx, the first for FirstRefusal. FirstFailure is why
	// the first that failed in its block failed.
	Broadcast                  time.Duration
	Rejected                   int
	FirstRefusal, FirstFailure string
	// Lost were accepted at CheckTx and never reached a block in the
	// twenty blocks after the last that carried one. Rejected, Lost and
	// the blocks' counts are of settlements, whatever txs carried them.
	// A gateway's txs are
	// sent back to back; when one of them is dropped (a peer that got
	// them out of order, or a recheck that raced a new tx), the gateway's
	// later sequence numbers cannot land.
	Lost int
	// GasLimit is what a tx's gas limit allows each of its settlements
	// (a tx of n has n times it); GasUsed the mean a settlement used.
	GasLimit, GasUsed uint64
	// Txs is how many txs carried the settlements broadcast.
	Txs int
}

// IdleInterval is the mean interval between idle blocks.
func (r *Result) IdleInterval() time.Duration {
	if r.IdleBlocks == 0 {
		return 0
	}
	return r.IdleSpan / time.Duration(r.IdleBlocks)
}

// IdleBlocksPerSecond is the idle block rate.
func (r *Result) IdleBlocksPerSecond() float64 {
	return float64(r.IdleBlocks) / r.IdleSpan.Seconds()
}

// Settled is how many settlements succeeded.
func (r *Result) Settled() int {
	n := 0
	for _, b := range r.Blocks {
		n += b.Settlements
	}
	return n
}

// Failed is how many settlements were included and failed.
func (r *Result) Failed() int {
	n := 0
	for _, b := range r.Blocks {
		n += b.Failed
	}
	return n
}

// loadSpan is from the commit of the block before the first loaded one to
// the commit of the last.
func (r *Result) loadSpan() time.Duration {
	var d time.Duration
	for _, b := range r.Blocks {
		d += b.Interval
	}
	return d
}

// LoadBlocksPerSecond is the block rate while blocks carried settlements.
func (r *Result) LoadBlocksPerSecond() float64 {
	return float64(len(r.Blocks)) / r.loadSpan().Seconds()
}

// SettlementsPerSecond is the settlements committed per second over the
// same span.
func (r *Result) SettlementsPerSecond() float64 {
	return float64(r.Settled()) / r.loadSpan().Seconds()
}

// Fullest is the block that carried the most settlements (the first of
// equals).
func (r *Result) Fullest() Block {
	var best Block
	for _, b := range r.Blocks {
		if b.Settlements > best.Settlements {
			best = b
		}
	}
	return best
}

// PerSettlement is what one settlement adds to a block's Exec: over every
// block that carried settlements, their Exec beyond an idle block's, over
// the settlements they carried. It is a validator's time to execute a
// settlement, as this machine gives it the cores.
func (r *Result) PerSettlement() time.Duration {
	var exec time.Duration
	n := 0
	for _, b := range r.Blocks {
		if b.Settlements+b.Failed == 0 {
			continue
		}
		exec += max(0, b.Exec-r.IdleExec)
		n += b.Settlements + b.Failed
	}
	if n == 0 {
		return 0
	}
	return exec / time.Duration(n)
}

// CPUPerSettlement is the CPU time one validator spent per settlement
// beyond its idle use: checking the tx, receiving it and its block from
// peers, executing it. It does not depend on how many cores the machine
// gives the validators, so it says what a validator with a core of its own
// would sustain: 1/CPUPerSettlement settlements a second at most.
func (r *Result) CPUPerSettlement() time.Duration {
	settled := r.Settled()
	if settled == 0 || r.IdleSpan == 0 {
		return 0
	}
	idle := time.Duration(float64(r.IdleCPU) * r.LoadWall.Seconds() / r.IdleSpan.Seconds())
	return max(0, r.LoadCPU-idle) / time.Duration(settled*r.Validators)
}

// ExecOf is the Exec of a block of n settlements: the idle block's and n
// times PerSettlement.
func (r *Result) ExecOf(n int) time.Duration {
	return r.IdleExec + time.Duration(n)*r.PerSettlement()
}

// Run starts a network as cfg says, measures its idle block rate, loads it
// with cfg.Settlements settlements and measures the blocks that carried
// them. The network is stopped before Run returns.
func Run(ctx context.Context, cfg Config) (res *Result, err error) {
	if cfg.Progress == nil {
		cfg.Progress = func(string, ...any) {}
	}
	if cfg.Settlements < 1 || cfg.Gateways < 1 || cfg.Hosts < 1 || cfg.GroupSize < 1 {
		return nil, fmt.Errorf("chainload: settlements, gateways, hosts and group size must be positive (got %d, %d, %d, %d)",
			cfg.Settlements, cfg.Gateways, cfg.Hosts, cfg.GroupSize)
	}
	cfg.Gateways = min(cfg.Gateways, cfg.Settlements)
	cfg.PerTx = max(cfg.PerTx, 1)
	params := devshardtypes.DefaultParams()
	params.EpochLength = cfg.EpochLength
	params.GroupSize = uint32(cfg.GroupSize)
	params.ExpiryEpochs = 10
	funds := sdk.NewCoins(sdk.NewCoin(chain.Denom, sdkmath.NewInt(1_000_000_000_000)))
	var accounts []node.Account
	for i := range cfg.Hosts {
		accounts = append(accounts, node.Account{Name: fmt.Sprintf("host%d", i), Coins: funds})
	}
	for i := range cfg.Gateways {
		accounts = append(accounts, node.Account{Name: fmt.Sprintf("gateway%d", i), Coins: funds})
	}
	n, err := localnet.Start(ctx, localnet.Config{
		Home: cfg.Home, Binary: cfg.Binary, Validators: cfg.Validators, BlockTime: cfg.BlockTime,
		Params: &params, Accounts: accounts, Progress: cfg.Progress, SkipInvariants: !cfg.CheckInvariants,
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		stop, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = errors.Join(err, n.Close(stop))
	}()
	var homes []string
	for _, v := range n.Validators() {
		homes = append(homes, v.Home)
	}
	l := &load{cfg: cfg, n: n, cpu: cpuMeter{homes: homes}, hosts: n.Accounts[:cfg.Hosts], gateways: n.Accounts[cfg.Hosts:], params: params}
	return l.run(ctx)
}

// load is one run's network and accounts.
type load struct {
	cfg             Config
	n               *localnet.Network
	hosts, gateways []node.Account
	params          devshardtypes.Params
	watch           *watcher
	cpu             cpuMeter
}

func (l *load) run(ctx context.Context) (*Result, error) {
	res := &Result{Validators: l.cfg.Validators}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	l.watch = newWatcher(l.n.Nodes[0])
	go l.watch.run(watchCtx)

	l.cfg.Progress("registering %d hosts", len(l.hosts))
	if err := l.register(ctx); err != nil {
		return nil, err
	}
	if err := l.idle(ctx, res); err != nil {
		return nil, err
	}
	l.cfg.Progress("idle: %d blocks in %.1f s (%.3f blocks/s); waiting for epoch 2 (block %d)",
		res.IdleBlocks, res.IdleSpan.Seconds(), res.IdleBlocksPerSecond(), l.params.EpochLength+1)
	if err := l.waitForActiveEpoch(ctx, 2); err != nil {
		return nil, err
	}
	escrows, err := l.createEscrows(ctx)
	if err != nil {
		return nil, err
	}
	l.cfg.Progress("building %d settlements of %d slots offline", len(escrows), l.cfg.GroupSize)
	start := time.Now()
	settlements, err := l.settlements(escrows)
	if err != nil {
		return nil, err
	}
	l.cfg.Progress("built in %.1f s; settling one escrow per gateway to learn the gas", time.Since(start).Seconds())
	if res.GasLimit, err = l.probeGas(ctx, settlements); err != nil {
		return nil, err
	}
	txs, err := l.sign(ctx, settlements, res.GasLimit)
	if err != nil {
		return nil, err
	}
	return res, l.burst(ctx, txs, res)
}

// register registers every host, with the least collateral, all at once.
func (l *load) register(ctx context.Context) error {
	return forEach(len(l.hosts), len(l.hosts), func(i int) error {
		h := l.hosts[i]
		_, err := l.n.TxClient().Send(ctx, h.Key, &devshardtypes.MsgRegisterParticipant{
			Participant: h.Address.String(), Url: fmt.Sprintf("https://host%d.example", i),
			Collateral: l.params.MinCollateral,
		})
		if err != nil {
			return fmt.Errorf("registering host %d: %w", i, err)
		}
		return nil
	})
}

// idle measures the block rate for cfg.Idle with nothing sent.
func (l *load) idle(ctx context.Context, res *Result) error {
	l.cfg.Progress("measuring the idle block rate for %s", l.cfg.Idle)
	// The first height the watcher sees may be one committed before it
	// started: the idle span starts at the commit after it.
	if _, err := l.watch.next(ctx); err != nil {
		return err
	}
	from, err := l.watch.next(ctx)
	if err != nil {
		return err
	}
	cpu0, err := l.cpu.total()
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(l.cfg.Idle):
	}
	to, err := l.watch.next(ctx)
	if err != nil {
		return err
	}
	cpu1, err := l.cpu.total()
	if err != nil {
		return err
	}
	res.IdleCPU = cpu1 - cpu0
	res.IdleBlocks = int(to - from)
	res.IdleSpan = l.watch.at(to).Sub(l.watch.at(from))
	var exec time.Duration
	for h := from + 1; h <= to; h++ {
		exec += l.watch.exec(h)
	}
	res.IdleExec = exec / time.Duration(max(1, res.IdleBlocks))
	return nil
}

// waitForActiveEpoch waits until epoch id is ACTIVE.
func (l *load) waitForActiveEpoch(ctx context.Context, id uint64) error {
	q := devshardtypes.NewQueryClient(l.n.Conn())
	for {
		res, err := q.CurrentEpoch(ctx, &devshardtypes.QueryCurrentEpochRequest{})
		if err == nil && res.Epoch.Id >= id {
			if res.Epoch.Id > id || res.Epoch.State != devshardtypes.EpochActive {
				return fmt.Errorf("waiting for epoch %d to be ACTIVE, found epoch %d %s", id, res.Epoch.Id, res.Epoch.State)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for epoch %d: %w", id, ctx.Err())
		case <-time.After(l.cfg.BlockTime / 4):
		}
	}
}

// escrow is an open escrow and the gateway that created it.
type escrow struct {
	gateway int
	esc     devshardtypes.Escrow
}

// createEscrows opens cfg.Settlements escrows, plus one per gateway for
// the gas probe, each gateway its share in one tx.
func (l *load) createEscrows(ctx context.Context) ([]escrow, error) {
	share := make([]int, len(l.gateways))
	for i := range l.cfg.Settlements {
		share[i%len(share)]++
	}
	l.cfg.Progress("opening %d escrows from %d gateways", l.cfg.Settlements+len(share), len(share))
	ids := make([][]uint64, len(share))
	err := forEach(len(share), len(share), func(g int) error {
		gw := l.gateways[g]
		msgs := make([]sdk.Msg, share[g]+1)
		for i := range msgs {
			msgs[i] = &devshardtypes.MsgCreateEscrow{Creator: gw.Address.String(), Amount: 100_000}
		}
		res, err := l.n.TxClient().Send(ctx, gw.Key, msgs...)
		if err != nil {
			return fmt.Errorf("gateway %d opening %d escrows: %w", g, len(msgs), err)
		}
		ids[g] = createdEscrows(res)
		if len(ids[g]) != len(msgs) {
			return fmt.Errorf("gateway %d opened %d escrows; its tx %s reports %d", g, len(msgs), res.TxHash, len(ids[g]))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	q := devshardtypes.NewQueryClient(l.n.Conn())
	var out []escrow
	for g, list := range ids {
		for _, id := range list {
			e, err := q.Escrow(ctx, &devshardtypes.QueryEscrowRequest{Id: id})
			if err != nil {
				return nil, fmt.Errorf("escrow %d: %w", id, err)
			}
			out = append(out, escrow{gateway: g, esc: e.Escrow})
		}
	}
	return out, nil
}

// createdEscrows are the ids of the escrows a tx created, in order.
func createdEscrows(res *sdk.TxResponse) []uint64 {
	var ids []uint64
	for _, ev := range res.Events {
		if ev.Type != "devshard.devshard.v1.EventEscrowCreated" {
			continue
		}
		for _, a := range ev.Attributes {
			if a.Key != "escrow_id" {
				continue
			}
			if id, err := strconv.ParseUint(strings.Trim(a.Value, `"`), 10, 64); err == nil {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// settlement is a settlement ready to send, and who sends it.
type settlement struct {
	gateway int
	msg     *devshardtypes.MsgSettleEscrow
	// hosts is how many distinct hosts the escrow's group holds: each is
	// paid and its ledger written, so it sets the settlement's gas.
	hosts int
}

// settlements builds a settlement of every escrow on every core: an honest
// session of two inferences, finalized and signed by every slot, as the
// in-process benchmark (x/devshard/keeper) settles.
func (l *load) settlements(escrows []escrow) ([]settlement, error) {
	keys := &sessiontest.Fixture{}
	byAddr := map[string]int{}
	for i, h := range l.hosts {
		k, err := signing.PrivKeyFromBytes(h.Key.Key)
		if err != nil {
			return nil, err
		}
		keys.Hosts = append(keys.Hosts, k)
		byAddr[string(h.Address)] = i
	}
	gwKeys := make([]*signing.PrivKey, len(l.gateways))
	for i, gw := range l.gateways {
		k, err := signing.PrivKeyFromBytes(gw.Key.Key)
		if err != nil {
			return nil, err
		}
		gwKeys[i] = k
	}
	out := make([]settlement, len(escrows))
	err := forEach(len(escrows), runtime.GOMAXPROCS(0), func(i int) error {
		e := escrows[i]
		snap := e.esc.Snapshot
		f := &sessiontest.Fixture{Gateway: gwKeys[e.gateway], Hosts: keys.Hosts, Snapshot: &snap}
		distinct := map[string]bool{}
		for _, a := range snap.Group {
			distinct[string(a)] = true
			h, ok := byAddr[string(a)]
			if !ok {
				return fmt.Errorf("escrow %d: group member %x is not one of the hosts", e.esc.Id, a)
			}
			f.Holders = append(f.Holders, h)
		}
		m, err := honestSettlement(f, 2)
		if err != nil {
			return fmt.Errorf("escrow %d: %w", e.esc.Id, err)
		}
		out[i] = settlement{gateway: e.gateway, msg: &devshardtypes.MsgSettleEscrow{
			Sender: l.gateways[e.gateway].Address.String(), Settlement: m,
		}, hosts: len(distinct)}
		return nil
	})
	return out, err
}

// honestSettlement plays n inferences (10 tokens in, 40 out), finalizes the
// session and returns its settlement signed by every slot.
func honestSettlement(f *sessiontest.Fixture, n int) (*sessionpb.Settlement, error) {
	seq := f.Sequencer()
	for range n {
		id := seq.Replica.Nonce() + 1
		if _, err := seq.Next(sessiontest.Start(id, 10, 100)); err != nil {
			return nil, err
		}
		exec := seq.Replica.Executor(id)
		if _, err := seq.Next(f.Confirm(exec, id, sessiontest.Timestamp(id)), f.Finish(exec, id, 10, 40)); err != nil {
			return nil, err
		}
	}
	for range 2 {
		if _, err := seq.Next(sessiontest.Finalize()); err != nil {
			return nil, err
		}
	}
	m := f.Settle(seq.Replica, f.AllSlots()...)
	session.ArrangeSignatures(m) // in the order a gateway attaches them
	return m, nil
}

// gasMargin is added to the most gas a probe settlement used. CometBFT
// fills a block by the txs' gas limits, not the gas they use, so the
// margin is kept small. It covers what the probe cannot: ledgers whose
// amounts grow a byte as the load goes on.
const gasMargin = 1.2

// probeGas sends one settlement of each gateway through the chain client
// (simulated, then waited for) and returns the gas limit for the rest:
// the most any used, with gasMargin. Each gateway probes with its
// settlement whose group holds the most distinct hosts, since every host
// paid is a ledger written (a CI run that probed a group of fewer hosts
// saw 106k gas, then a settlement paying four used 128k and ran out).
// The probed settlements leave settlements; each gateway's sequence moves
// on by one.
func (l *load) probeGas(ctx context.Context, settlements []settlement) (uint64, error) {
	used := make([]int64, len(l.gateways))
	err := forEach(len(l.gateways), len(l.gateways), func(g int) error {
		i := probeFor(settlements, g)
		if i < 0 {
			return nil // this gateway sends nothing
		}
		res, err := l.n.TxClient().Send(ctx, l.gateways[g].Key, settlements[i].msg)
		if err != nil {
			return fmt.Errorf("gateway %d settling escrow %d: %w", g, settlements[i].msg.Settlement.EscrowId, err)
		}
		used[g] = res.GasUsed
		settlements[i].msg = nil
		return nil
	})
	if err != nil {
		return 0, err
	}
	return uint64(float64(slices.Max(used)) * gasMargin), nil
}

// probeFor is the index of gateway g's settlement with the most distinct
// hosts, the first of them on a tie.
func probeFor(settlements []settlement, g int) int {
	best := -1
	for i, s := range settlements {
		if s.gateway == g && (best < 0 || s.hosts > settlements[best].hosts) {
			best = i
		}
	}
	return best
}

// signedTx is a tx ready to broadcast, and how many settlements it holds.
type signedTx struct {
	bytes       []byte
	settlements int
}

// sign signs the settlements left into txs of up to PerTx each, each
// gateway's in sequence order, and returns them per gateway. A tx's gas
// limit is gas per settlement it holds.
func (l *load) sign(ctx context.Context, settlements []settlement, gas uint64) ([][]signedTx, error) {
	auth := authtypes.NewQueryClient(l.n.Conn())
	txs := make([][]signedTx, len(l.gateways))
	for g, gw := range l.gateways {
		info, err := auth.AccountInfo(ctx, &authtypes.QueryAccountInfoRequest{Address: gw.Address.String()})
		if err != nil {
			return nil, fmt.Errorf("gateway %d: %w", g, err)
		}
		var msgs []sdk.Msg
		for _, s := range settlements {
			if s.gateway == g && s.msg != nil {
				msgs = append(msgs, s.msg)
			}
		}
		seq := info.Info.Sequence
		for part := range slices.Chunk(msgs, l.cfg.PerTx) {
			tx, err := chainclient.SignOffline(l.n.Encoding.TxConfig, gw.Key, l.n.ChainID, info.Info.AccountNumber, seq, gas*uint64(len(part)), part...)
			if err != nil {
				return nil, err
			}
			txs[g] = append(txs[g], signedTx{bytes: tx, settlements: len(part)})
			seq++
		}
	}
	return txs, nil
}

// burst broadcasts every tx at once, each gateway's in order to one
// validator (gateway g to validator g mod N), and reads the blocks that
// included them.
func (l *load) burst(ctx context.Context, txs [][]signedTx, res *Result) error {
	vals := l.n.Validators()
	clients := make([]txtypes.ServiceClient, len(vals))
	for i, v := range vals {
		conn, err := grpc.NewClient(v.GRPCAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		clients[i] = txtypes.NewServiceClient(conn)
	}
	total := 0
	for _, list := range txs {
		res.Txs += len(list)
		for _, tx := range list {
			total += tx.settlements
		}
	}
	from, err := l.n.Nodes[0].Height(ctx)
	if err != nil {
		return err
	}
	l.cfg.Progress("broadcasting %d settlements in %d txs (gas limit %d a settlement) over %d validators", total, res.Txs, res.GasLimit, len(vals))
	cpu0, err := l.cpu.total()
	if err != nil {
		return err
	}
	var mu sync.Mutex
	refusedTxs := 0
	start := time.Now()
	err = forEach(len(txs), len(txs), func(g int) error {
		c := clients[g%len(clients)]
		for _, tx := range txs[g] {
			r, err := c.BroadcastTx(ctx, &txtypes.BroadcastTxRequest{TxBytes: tx.bytes, Mode: txtypes.BroadcastMode_BROADCAST_MODE_SYNC})
			if err != nil {
				return fmt.Errorf("broadcasting: %w", err)
			}
			if r.TxResponse.Code != 0 {
				mu.Lock()
				res.Rejected += tx.settlements
				refusedTxs++
				if res.FirstRefusal == "" {
					res.FirstRefusal = r.TxResponse.RawLog
					l.cfg.Progress("gateway %d: a settlement refused at CheckTx: %s", g, r.TxResponse.RawLog)
				}
				mu.Unlock()
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	res.Broadcast = time.Since(start)
	l.cfg.Progress("broadcast in %.2f s, %d refused at CheckTx; following the blocks", res.Broadcast.Seconds(), res.Rejected)
	rpc, err := rpchttp.New(l.n.Nodes[0].RPCAddress, "/websocket")
	if err != nil {
		return err
	}
	heights, err := l.followBlocks(ctx, rpc, from+1, res.Txs-refusedTxs)
	if err != nil {
		return err
	}
	cpu1, err := l.cpu.total()
	if err != nil {
		return err
	}
	res.LoadCPU = cpu1 - cpu0
	res.LoadWall = time.Since(start)
	l.cfg.Progress("reading the results of %d blocks", len(heights))
	if err := l.readResults(ctx, rpc, heights, res); err != nil {
		return err
	}
	res.Lost = total - res.Rejected - res.Settled() - res.Failed()
	if res.Lost > 0 {
		l.cfg.Progress("%d of the %d settlements CheckTx accepted never reached a block", res.Lost, total-res.Rejected)
	}
	return nil
}

// followBlocks follows the blocks from height from on until they hold want
// txs, or twenty blocks in a row held none (the rest are lost), and
// returns the heights from the first that carried one to the last, empty
// ones between included. It reads only block headers' tx counts: the
// validators' CPU is measured meanwhile, and a block's results (its
// events, encoded as JSON) cost node 0 more to serve than to make.
func (l *load) followBlocks(ctx context.Context, rpc *rpchttp.HTTP, from int64, want int) ([]int64, error) {
	var heights []int64
	included, empty := 0, 0
	for h := from; included < want && empty < 20; h++ {
		if err := l.n.Nodes[0].WaitForHeight(ctx, h); err != nil {
			return nil, err
		}
		if err := l.watch.waitFor(ctx, h); err != nil {
			return nil, err
		}
		info, err := rpc.BlockchainInfo(ctx, h, h)
		if err != nil {
			return nil, fmt.Errorf("header of block %d: %w", h, err)
		}
		if len(info.BlockMetas) != 1 {
			return nil, fmt.Errorf("header of block %d: %d block metas", h, len(info.BlockMetas))
		}
		txs := info.BlockMetas[0].NumTxs
		switch {
		case txs == 0 && len(heights) == 0:
			continue
		case txs == 0:
			empty++
		default:
			empty = 0
		}
		included += txs
		heights = append(heights, h)
		l.cfg.Progress("block %d: %d txs, %.3f s after the block before, executed in %.3f s",
			h, txs, l.watch.at(h).Sub(l.watch.at(h-1)).Seconds(), l.watch.exec(h).Seconds())
	}
	return heights[:len(heights)-empty], nil
}

// readResults reads what each followed block did with its txs.
func (l *load) readResults(ctx context.Context, rpc *rpchttp.HTTP, heights []int64, res *Result) error {
	var gas uint64
	for _, h := range heights {
		br, err := rpc.BlockResults(ctx, &h)
		if err != nil {
			return fmt.Errorf("results of block %d: %w", h, err)
		}
		held, err := l.settlementsIn(ctx, rpc, h)
		if err != nil {
			return err
		}
		if len(held) != len(br.TxsResults) {
			return fmt.Errorf("block %d: %d txs and %d tx results", h, len(held), len(br.TxsResults))
		}
		b := Block{Height: h}
		for i, r := range br.TxsResults {
			if r.Code == 0 {
				b.Settlements += held[i]
				gas += uint64(r.GasUsed)
				continue
			}
			b.Failed += held[i]
			if res.FirstFailure == "" {
				res.FirstFailure = r.Log
				l.cfg.Progress("block %d: a settlement failed: %s", h, r.Log)
			}
		}
		b.Interval = l.watch.at(h).Sub(l.watch.at(h - 1))
		b.Exec = l.watch.exec(h)
		if b.HeaderInterval, err = headerInterval(ctx, rpc, h); err != nil {
			return err
		}
		res.Blocks = append(res.Blocks, b)
	}
	if settled := res.Settled(); settled > 0 {
		res.GasUsed = gas / uint64(settled)
	}
	return nil
}

// settlementsIn is how many settlements each tx of block h holds.
func (l *load) settlementsIn(ctx context.Context, rpc *rpchttp.HTTP, h int64) ([]int, error) {
	blk, err := rpc.Block(ctx, &h)
	if err != nil {
		return nil, fmt.Errorf("block %d: %w", h, err)
	}
	decode := l.n.Encoding.TxConfig.TxDecoder()
	held := make([]int, len(blk.Block.Txs))
	for i, raw := range blk.Block.Txs {
		tx, err := decode(raw)
		if err != nil {
			return nil, fmt.Errorf("block %d, tx %d: %w", h, i, err)
		}
		held[i] = len(tx.GetMsgs())
	}
	return held, nil
}

// headerInterval is the time between the headers of blocks h-1 and h.
func headerInterval(ctx context.Context, rpc *rpchttp.HTTP, h int64) (time.Duration, error) {
	prev := h - 1
	a, err := rpc.Header(ctx, &prev)
	if err != nil {
		return 0, fmt.Errorf("header of block %d: %w", prev, err)
	}
	b, err := rpc.Header(ctx, &h)
	if err != nil {
		return 0, fmt.Errorf("header of block %d: %w", h, err)
	}
	return b.Header.Time.Sub(a.Header.Time), nil
}

// forEach runs fn(0..n-1) on up to workers goroutines and returns the
// first error.
func forEach(n, workers int, fn func(i int) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		next = make(chan int)
	)
	for range max(1, min(workers, n)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}
