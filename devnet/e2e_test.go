package devnet

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	sdkmath "cosmossdk.io/math"
	"github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
	sdk "github.com/cosmos/cosmos-sdk/types"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/gateway"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// binary is the devshard executable the hosts run as, built once.
var binary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "devshard-e2e-bin-")
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "devshard")
	cmd := exec.Command("go", "build", "-o", out, "../cmd/devshard")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/devshard: %v\n%s", err, msg)
	}
	return out, nil
})

// e2e is one running devnet and what the test knows about it.
type e2e struct {
	t     *testing.T
	ctx   context.Context
	nw    *Network
	price uint64
}

func startE2E(t *testing.T) *e2e {
	return startNetwork(t, 25*time.Minute, func(c *Config) {
		c.ThinkTime = 15 * time.Millisecond
		c.Workers = 2 // every host hands its inferences and validations to two workers
	})
}

// startNetwork starts a devnet in a temporary home for one test, shaped by
// shape (its Params start as Params() with missed inferences unpunished),
// and stops it when the test ends, with the hosts' log tails if it failed
// (and the whole home copied under $DEVSHARD_KEEP_FAILED, when set).
func startNetwork(t *testing.T, timeout time.Duration, shape func(*Config)) *e2e {
	bin, err := binary()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	p := Params()
	// A missed inference does not punish here, so a host killed on
	// purpose is still paid exactly its attested work (punishment has its
	// own chain tests).
	p.MaxMissedRatioBps = 10_000
	home := t.TempDir()
	cfg := Config{Home: home, Binary: bin, Params: &p, Progress: testWriter{t}}
	shape(&cfg)
	nw, err := Start(ctx, cfg)
	require.NoError(t, err, "devnet did not start; host logs are under %s", home)
	t.Cleanup(func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		if err := nw.Close(closeCtx); err != nil {
			t.Logf("devnet close: %v", err)
		}
		if t.Failed() {
			for _, h := range nw.Hosts {
				t.Logf("%s log tail:\n%s", h.Name, logTail(h.LogPath, 30))
			}
			// Every process's whole log, the gateway's and the versions'
			// children's included, is in the home, which the test removes.
			if keep := os.Getenv("DEVSHARD_KEEP_FAILED"); keep != "" {
				dst := filepath.Join(keep, strings.ReplaceAll(t.Name(), "/", "_"))
				if out, err := exec.Command("cp", "-r", home, dst).CombinedOutput(); err != nil {
					t.Logf("keeping the devnet's home: %v: %s", err, out)
				} else {
					t.Logf("the devnet's home, every log in it, is kept in %s", dst)
				}
			}
		}
	})
	return &e2e{t: t, ctx: ctx, nw: nw, price: cfg.Params.TokenPrice}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (e *e2e) balance(addr sdk.AccAddress) int64 {
	e.t.Helper()
	res, err := banktypes.NewQueryClient(e.nw.Chain.Conn()).Balance(e.ctx, &banktypes.QueryBalanceRequest{Address: addr.String(), Denom: chain.Denom})
	require.NoError(e.t, err)
	return res.Balance.Amount.Int64()
}

var moduleAddr = authtypes.NewModuleAddress(devshardtypes.ModuleName)

// balances are the accounts the test follows.
type balances struct {
	gateway, module int64
	hosts           []int64
}

func (e *e2e) balances() balances {
	b := balances{gateway: e.balance(e.nw.GatewayAccount.Address), module: e.balance(moduleAddr)}
	for _, h := range e.nw.Hosts {
		b.hosts = append(b.hosts, e.balance(h.Account))
	}
	return b
}

func (e *e2e) client() *Client { return NewClient(e.nw.Info.Gateway.URL, e.nw.Info.Gateway.APIKey) }

// spent is what the app was charged for one answer, from the usage the
// gateway reported to it.
func (e *e2e) spent(r *ChatResult) uint64 {
	return uint64(r.PromptTokens+r.CompletionTokens) * e.price
}

// send sends n requests, parallel at a time, every third streamed, and
// returns the sum of their charges.
func (e *e2e) send(n, parallel int, tag string) uint64 {
	e.t.Helper()
	var (
		mu    sync.Mutex
		total uint64
		errs  []error
		wg    sync.WaitGroup
	)
	work := make(chan int)
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := e.client()
			for i := range work {
				req := ChatRequest{Model: executor.BuiltinModel, MaxTokens: 8 + i%24,
					Messages: []executor.Message{{Role: "user", Content: fmt.Sprintf("%s request %d", tag, i)}}}
				res, err := c.Chat(e.ctx, req, i%3 == 0)
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("request %d: %w", i, err))
				} else {
					total += e.spent(res)
					if want := expectedText(e.t, req); res.Text != want {
						errs = append(errs, fmt.Errorf("request %d: answer %q, the model says %q", i, res.Text, want))
					}
				}
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	require.Empty(e.t, errs)
	return total
}

// expectedText is what the built-in model answers, run directly.
func expectedText(t *testing.T, req ChatRequest) string {
	res, err := executor.Builtin{}.Execute(context.Background(), executor.Request{Model: req.Model, Messages: req.Messages, MaxTokens: req.MaxTokens}, func(string) error { return nil })
	require.NoError(t, err)
	return res.Text
}

// settled settles everything and returns the settlements of the escrows
// settled since the first `skip`, read back from their txs on chain, with
// the plans the protocol computes for them.
func (e *e2e) settleAll(skip int) []settled {
	e.t.Helper()
	require.NoError(e.t, e.nw.Gateway.Gateway.SettleAll(e.ctx))
	list, err := e.nw.Gateway.Gateway.Settled(e.ctx)
	require.NoError(e.t, err)
	var out []settled
	for _, s := range list[skip:] {
		out = append(out, e.readSettlement(s.ID, s.TxHash))
	}
	require.NotEmpty(e.t, out, "nothing was settled")
	for _, s := range out {
		require.NoError(e.t, waitClaims(e.ctx, e.nw, s.snap.Epoch))
	}
	return out
}

type settled struct {
	snap *sessionpb.EscrowSnapshot
	msg  *sessionpb.Settlement
	plan *session.Plan
}

func (e *e2e) readSettlement(id uint64, hash string) settled {
	e.t.Helper()
	require.NotEmpty(e.t, hash, "escrow %d has no settlement tx recorded", id)
	// With several nodes the one read may be a block behind the one that
	// took the settlement.
	var esc *devshardtypes.QueryEscrowResponse
	require.Eventually(e.t, func() bool {
		var err error
		esc, err = devshardtypes.NewQueryClient(e.nw.Chain.Conn()).Escrow(e.ctx, &devshardtypes.QueryEscrowRequest{Id: id})
		return err == nil && esc.Escrow.Status == devshardtypes.EscrowSettled
	}, 10*time.Second, 100*time.Millisecond, "escrow %d is settled", id)
	// ... and index its txs a moment after the node that took it.
	var res *txtypes.GetTxResponse
	var err error
	require.Eventually(e.t, func() bool {
		res, err = txtypes.NewServiceClient(e.nw.Chain.Conn()).GetTx(e.ctx, &txtypes.GetTxRequest{Hash: hash})
		return err == nil
	}, 10*time.Second, 100*time.Millisecond, "settlement tx %s of escrow %d is found", hash, id)
	var m *devshardtypes.MsgSettleEscrow
	for _, any := range res.Tx.Body.Messages {
		var msg sdk.Msg
		require.NoError(e.t, e.nw.Chain.Encoding.InterfaceRegistry.UnpackAny(any, &msg))
		if s, ok := msg.(*devshardtypes.MsgSettleEscrow); ok {
			m = s
		}
	}
	require.NotNil(e.t, m, "tx %s carries no MsgSettleEscrow", hash)
	snap := esc.Escrow.Snapshot
	plan, err := session.VerifySettlement(&snap, m.Settlement, nil)
	require.NoError(e.t, err)
	return settled{snap: &snap, msg: m.Settlement, plan: plan}
}

// checkBooks checks, from chain balances, that the gateway paid exactly
// the charged costs plus the fees, each host received exactly its cost and
// fee share, the creator got the rest, and the module holds only the
// collateral again.
func (e *e2e) checkBooks(before balances, charged uint64, ss []settled) {
	e.t.Helper()
	after := e.balances()
	var costs, fees uint64
	toHost := map[signing.Address]uint64{}
	for _, s := range ss {
		want, ok := session.ExpectedFees(s.snap, s.msg.ActiveNonces)
		require.True(e.t, ok)
		require.Equal(e.t, want, s.msg.Fees, "escrow %d: fees are the snapshot's creation fee plus fee per nonce × %d active nonces", s.snap.EscrowId, s.msg.ActiveNonces)
		fees += s.msg.Fees
		for _, hs := range s.msg.HostStats {
			costs += hs.Cost
		}
		for _, a := range s.plan.ByAddress() {
			toHost[a.Address] += a.Cost + a.FeeShare
		}
		require.Equal(e.t, s.snap.Amount, s.plan.Refund+s.plan.Fees+sumCosts(s.msg), "escrow %d conserves", s.snap.EscrowId)
	}
	if charged != 0 { // 0: a settlement made without the gateway, which may miss the last finishes
		require.Equal(e.t, charged, costs, "the costs the hosts attested equal what the app was charged")
	}
	require.Equal(e.t, int64(costs+fees), before.gateway-after.gateway, "the gateway paid Σ costs + fees; the rest came back")
	for i, h := range e.nw.Hosts {
		a, err := signing.AddressFromBytes(h.Account)
		require.NoError(e.t, err)
		require.Equal(e.t, int64(toHost[a]), after.hosts[i]-before.hosts[i], "%s received its costs plus its fee share", h.Name)
	}
	require.Equal(e.t, int64(len(e.nw.Hosts)*Collateral), after.module, "the module account holds the collateral alone")
	cons, err := devshardtypes.NewQueryClient(e.nw.Chain.Conn()).Conservation(e.ctx, &devshardtypes.QueryConservationRequest{})
	require.NoError(e.t, err)
	require.Equal(e.t, cons.Balance, cons.Owed)
}

func sumCosts(m *sessionpb.Settlement) uint64 {
	var c uint64
	for _, hs := range m.HostStats {
		c += hs.Cost
	}
	return c
}

// TestEndToEnd runs the devnet: requests through the gateway (streamed
// and not, by hand and through the official openai npm client), bad input,
// an exhausted gateway, settlement and claims with exact balances, then a
// host killed mid-stream, then a host killed with kill -9 that recovers to
// the group's root while the others keep serving.
func TestEndToEnd(t *testing.T) {
	e := startE2E(t)

	t.Run("requests settle and pay exactly", func(t *testing.T) {
		e.t = t
		before := e.balances()
		charged := e.send(50, 4, "e2e")
		res := runOpenAIClient(t, e.nw.Info.Gateway.URL, e.nw.Info.Gateway.APIKey)
		require.Contains(t, res.Models, executor.BuiltinModel)
		require.NotEmpty(t, res.StreamText)
		require.Positive(t, res.StreamUsage.CompletionTokens)
		require.Equal(t, res.StreamUsage.PromptTokens+res.StreamUsage.CompletionTokens, res.StreamUsage.TotalTokens)
		require.NotEmpty(t, res.Text)
		res.checkProtocol(t)
		charged += uint64(res.tokens()) * e.price
		ss := e.settleAll(0)
		e.checkBooks(before, charged, ss)
	})

	t.Run("bad input moves no coins", func(t *testing.T) {
		e.t = t
		before := e.balances()
		url := e.nw.Info.Gateway.URL
		ok := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}],"max_tokens":8}`, executor.BuiltinModel)
		cases := []struct {
			name, key, body string
			status          int
			says            string
		}{
			{"no key", "", ok, http.StatusUnauthorized, "didn't provide an API key"},
			{"bad key", "sk-devshard-not-a-real-key", ok, http.StatusUnauthorized, "Incorrect API key"},
			{"malformed body", e.nw.Info.Gateway.APIKey, `{"model":`, http.StatusBadRequest, "could not parse the JSON body"},
			{"no messages", e.nw.Info.Gateway.APIKey, fmt.Sprintf(`{"model":%q,"messages":[]}`, executor.BuiltinModel), http.StatusBadRequest, "at least one message"},
			{"unknown model", e.nw.Info.Gateway.APIKey, `{"model":"gpt-nonexistent","messages":[{"role":"user","content":"hi"}]}`, http.StatusNotFound, `model "gpt-nonexistent" does not exist`},
			{"max_tokens too large", e.nw.Info.Gateway.APIKey, fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}],"max_tokens":100000}`, executor.BuiltinModel), http.StatusBadRequest, "allows at most 4096"},
			{"negative max_tokens", e.nw.Info.Gateway.APIKey, fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}],"max_tokens":-3}`, executor.BuiltinModel), http.StatusBadRequest, "positive integer"},
		}
		for _, c := range cases {
			_, err := (&Client{URL: url, Key: c.key, HTTP: http.DefaultClient}).Post(e.ctx, []byte(c.body), false)
			var ae *APIError
			require.ErrorAs(t, err, &ae, c.name)
			require.Equal(t, c.status, ae.Status, "%s: %s", c.name, ae.Message)
			require.Contains(t, ae.Message, c.says, c.name)
		}
		require.Empty(t, e.nw.Gateway.Gateway.Escrows(), "no escrow was opened for bad input")

		// A gateway whose account cannot lock an escrow answers 429 insufficient_quota, as OpenAI does.
		poorKey := secp256k1.GenPrivKey()
		poor := sdk.AccAddress(poorKey.PubKey().Address())
		_, err := e.nw.Chain.TxClient().Send(e.ctx, e.nw.Chain.Funder.Key,
			banktypes.NewMsgSend(e.nw.Chain.Funder.Address, poor, sdk.NewCoins(sdk.NewCoin(chain.Denom, sdkmath.NewInt(5_000)))))
		require.NoError(t, err)
		key, err := signing.PrivKeyFromBytes(poorKey.Key)
		require.NoError(t, err)
		api, secret := gateway.NewAPIKey("poor")
		d, err := gateway.Open(e.ctx, gateway.DaemonConfig{Listen: "127.0.0.1:0", Home: t.TempDir(), ChainGRPC: e.nw.Chain.Nodes[0].GRPC,
			ChainRPC: e.nw.Chain.Nodes[0].RPC, ChainID: e.nw.Chain.ChainID, Key: key, Keys: []gateway.APIKey{api}})
		require.NoError(t, err)
		defer d.Close(e.ctx)
		_, err = NewClient(d.URL(), secret).Post(e.ctx, []byte(ok), false)
		var ae *APIError
		require.ErrorAs(t, err, &ae)
		require.Equal(t, http.StatusTooManyRequests, ae.Status, ae.Message)
		require.Equal(t, "insufficient_quota", ae.Code)
		require.Contains(t, ae.Message, "holds 5000 and an escrow locks 10000000")
		require.Equal(t, int64(5_000), e.balance(poor))

		after := e.balances()
		require.Equal(t, before, after, "no coins moved")
	})

	t.Run("a host killed mid-stream is retried and timed out", func(t *testing.T) {
		e.t = t
		before := e.balances()
		skip, err := e.nw.Gateway.Gateway.SettledCount(e.ctx)
		require.NoError(t, err)
		e.waitEpochStart()                 // one escrow for the whole step
		charged := e.send(3, 1, "warm-up") // opens the escrow
		// The victim executes the next nonce. Slots are drawn by weight, so
		// one host may hold so many that the others cannot outvote it (5
		// of 6: one vote, but a third of the group is 2): then its
		// inference is never timed out, by the rule. Step on to a nonce
		// whose executor the others can time out, or, in a group where
		// none can be (all 6 slots one host's), to the next epoch's escrow.
		var (
			views  []gateway.EscrowView
			victim *Host
			need   int
		)
		for attempt := 0; ; attempt++ {
			views = e.nw.Gateway.Gateway.Escrows()
			require.Len(t, views, 1)
			victim = e.hostAt(views[0].NextExecutor)
			var decidable bool
			if need, decidable = timeoutVotesToDecide(t, e, views[0].ID, victim); decidable {
				break
			}
			require.Less(t, attempt, 20, "found no executor the others can time out")
			if !e.anyTimeoutDecidable(views[0].ID) {
				e.waitEpochStart()
			}
			charged += e.send(1, 1, fmt.Sprintf("step-%d", attempt))
		}

		req := ChatRequest{Model: executor.BuiltinModel, MaxTokens: 60, Messages: []executor.Message{{Role: "user", Content: "a long answer, please, about retries"}}}
		var once sync.Once
		c := e.client()
		c.OnText = func(string) { once.Do(victim.Kill) }
		timeouts := carriedTimeouts(t, e.nw.Info.Gateway.URL)
		res, err := c.Chat(e.ctx, req, true)
		require.NoError(t, err, "the app sees one answer despite the executor dying")
		require.Equal(t, expectedText(t, req), res.Text, "the answer is whole and nothing is repeated")
		charged += e.spent(res)
		require.False(t, victim.Running(), "the victim was killed")
		// The group votes the dead executor's inference out once its
		// execution timeout has passed; enough votes to decide must ride a
		// diff before the escrow settles (by the gateway, or by a host at
		// its deadline). One vote alone decides nothing: an inference still
		// undecided at settlement is released, and nobody is blamed.
		require.Eventually(t, func() bool { return carriedTimeouts(t, e.nw.Info.Gateway.URL) >= timeouts+float64(need) }, 90*time.Second, 250*time.Millisecond,
			"fewer than %d timeout votes on the killed executor's inference rode a diff", need)

		require.NoError(t, victim.Start())
		require.NoError(t, victim.WaitReady(e.ctx, 30*time.Second))
		charged += e.send(6, 2, "after-kill")
		ss := e.settleAll(skip)
		missed := uint64(0)
		va, _ := signing.AddressFromBytes(victim.Account)
		for _, s := range ss {
			for slot, hs := range s.msg.HostStats {
				if string(s.snap.Group[slot]) == string(va[:]) {
					missed += hs.Missed
				}
			}
		}
		require.Positive(t, missed, "the killed executor's inference was timed out by the group's votes and counted as missed")
		e.checkBooks(before, charged, ss)
	})

	t.Run("a worker killed with kill -9 loses no request", func(t *testing.T) {
		e.t = t
		before := e.balances()
		skip, err := e.nw.Gateway.Gateway.SettledCount(e.ctx)
		require.NoError(t, err)
		load := e.startLoad(4, "worker-kill")
		time.Sleep(2 * time.Second)
		victim := e.nw.Workers[0]
		victim.Kill()
		time.Sleep(4 * time.Second)
		var charged uint64
		var failed []string
		recs := load.stop()
		for _, r := range recs {
			if r.ok {
				charged += r.charged
			} else {
				failed = append(failed, r.err)
			}
		}
		require.Empty(t, failed, "the gateway retried what the dead worker's host could not finish")
		require.Greater(t, len(recs), 10)
		require.NoError(t, victim.Start())
		require.NoError(t, victim.waitRunning(e.ctx, 30*time.Second))
		charged += e.send(6, 2, "after-worker-kill")
		ss := e.settleAll(skip)
		e.checkBooks(before, charged, ss)

		ran, err := e.nw.WorkerJobs(e.ctx)
		require.NoError(t, err)
		for who := range ran {
			require.Contains(t, who, "worker", "every job ran on a worker, none in a host: %v", ran)
		}
		require.Positive(t, ran[e.nw.Workers[1].Name]["inference"], "the dead worker's sibling ran its host's inferences: %v", ran)
		// Each other host's jobs ran on its workers. A claim wakes one
		// waiting worker, so a host with few jobs may give them all to one
		// of its two: the count is per host, not per worker.
		perHost := map[string]int{}
		for _, w := range e.nw.Workers {
			if w.Host != victim.Host {
				perHost[w.Host] += ran[w.Name]["validation"] + ran[w.Name]["inference"]
			}
		}
		require.NotEmpty(t, perHost)
		for host, jobs := range perHost {
			require.Positive(t, jobs, "%s's workers ran jobs: %v", host, ran)
		}
	})

	t.Run("a host killed with kill -9 recovers to the group's root", func(t *testing.T) {
		e.t = t
		before := e.balances()
		skip, err := e.nw.Gateway.Gateway.SettledCount(e.ctx)
		require.NoError(t, err)
		charged := e.send(200, 8, "load")
		victim := e.nw.Hosts[1]
		victim.Kill()
		charged += e.send(20, 4, "while-down") // the others keep serving
		require.NoError(t, victim.Start())
		require.NoError(t, victim.WaitReady(e.ctx, 60*time.Second))
		// The gateway skips a host it found down for a few seconds, then
		// brings it up to date on the next diff.
		caughtUp := false
		for attempt := 0; attempt < 20 && !caughtUp; attempt++ {
			charged += e.send(1, 1, fmt.Sprintf("after-restart-%d", attempt))
			caughtUp = true
			for _, v := range e.nw.Gateway.Gateway.Escrows() {
				if e.holds(victim, v.ID) && e.hostRoot(victim, v.ID, v.Nonce) != v.Root {
					caughtUp = false
				}
			}
			if !caughtUp {
				time.Sleep(500 * time.Millisecond)
			}
		}
		require.True(t, caughtUp, "the restarted host reached the gateway's root in every escrow it serves")
		validations := 0.0
		for _, h := range e.nw.Hosts {
			validations += metric(t, h.URL, "devshard_host_validations_total")
		}
		require.Positive(t, validations, "hosts re-ran sampled inferences of their peers")
		ss := e.settleAll(skip)
		e.checkBooks(before, charged, ss)
	})

	t.Run("a gateway restart resumes its session and a settlement in flight", func(t *testing.T) {
		e.t = t
		before := e.balances()
		skip, err := e.nw.Gateway.Gateway.SettledCount(e.ctx)
		require.NoError(t, err)
		e.waitEpochStart() // one escrow for the whole step
		charged := e.send(10, 2, "before-restart")
		views := e.nw.Gateway.Gateway.Escrows()
		require.Len(t, views, 1)
		open := views[0]

		e.nw.Gateway.Halt() // as a crash would leave it: nothing settled
		require.NoError(t, e.nw.OpenGateway(e.ctx))
		resumed := e.nw.Gateway.Gateway.Escrows()
		require.Len(t, resumed, 1)
		require.Equal(t, open.ID, resumed[0].ID)
		require.Equal(t, open.Nonce, resumed[0].Nonce, "the session resumed at its last nonce")
		require.Equal(t, open.Root, resumed[0].Root, "the session resumed at its last root")
		charged += e.send(5, 1, "after-restart")
		require.Greater(t, e.nw.Gateway.Gateway.Escrows()[0].Nonce, open.Nonce, "the same escrow took the new requests")

		// With every host down the settlement cannot gather signatures: it
		// is left in flight, and the gateway halts.
		for _, h := range e.nw.Hosts {
			h.Kill()
		}
		short, cancel := context.WithTimeout(e.ctx, 4*time.Second)
		require.Error(t, e.nw.Gateway.Gateway.SettleAll(short))
		cancel()
		inFlight := e.nw.Gateway.Gateway.Escrows()
		require.Len(t, inFlight, 1)
		require.Equal(t, gateway.StatusSettling, inFlight[0].Status)
		e.nw.Gateway.Halt()

		for _, h := range e.nw.Hosts {
			require.NoError(t, h.Start())
		}
		for _, h := range e.nw.Hosts {
			require.NoError(t, h.WaitReady(e.ctx, 60*time.Second))
		}
		require.NoError(t, e.nw.OpenGateway(e.ctx)) // resumes the settlement
		require.Eventually(t, func() bool { return len(e.nw.Gateway.Gateway.Escrows()) == 0 }, 90*time.Second, 500*time.Millisecond,
			"the resumed settlement landed")
		list, err := e.nw.Gateway.Gateway.Settled(e.ctx)
		require.NoError(t, err)
		var ss []settled
		for _, s := range list[skip:] {
			ss = append(ss, e.readSettlement(s.ID, s.TxHash))
		}
		require.Len(t, ss, 1)
		require.NoError(t, waitClaims(e.ctx, e.nw, ss[0].snap.Epoch))
		e.checkBooks(before, charged, ss)
	})

	t.Run("hosts settle an escrow the gateway left open past its deadline", func(t *testing.T) {
		e.t = t
		before := e.balances()
		e.waitEpochStart()
		e.send(5, 1, "abandoned")
		views := e.nw.Gateway.Gateway.Escrows()
		require.Len(t, views, 1)
		id := views[0].ID
		e.nw.Gateway.Halt() // the gateway goes away without settling
		q := devshardtypes.NewQueryClient(e.nw.Chain.Conn())
		var last string
		isSettled := func() bool {
			qctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
			defer cancel()
			res, err := q.Escrow(qctx, &devshardtypes.QueryEscrowRequest{Id: id})
			if err != nil {
				last = err.Error()
				return false
			}
			last = res.Escrow.Status.String()
			return res.Escrow.Status == devshardtypes.EscrowSettled
		}
		for deadline := time.Now().Add(90 * time.Second); !isSettled(); time.Sleep(time.Second) {
			if time.Now().After(deadline) {
				t.Fatalf("no host settled escrow %d after its deadline (last seen: %s)", id, last)
			}
		}
		hash := e.settleTx(id)
		s := e.readSettlement(id, hash)
		require.NoError(t, waitClaims(e.ctx, e.nw, s.snap.Epoch))
		t.Cleanup(func() {
			if t.Failed() {
				e.logPay(s.snap.Epoch)
			}
		})
		e.checkBooks(before, 0, []settled{s})
		require.NoError(t, e.nw.OpenGateway(e.ctx)) // finds the escrow settled and lets it go
		require.Eventually(t, func() bool { return len(e.nw.Gateway.Gateway.Escrows()) == 0 }, 60*time.Second, 500*time.Millisecond)
	})
}

// logPay logs where epoch's pay stands: its state and each host's
// summary, for a run that fails on the books.
func (e *e2e) logPay(epoch uint64) {
	q := devshardtypes.NewQueryClient(e.nw.Chain.Conn())
	if ep, err := q.Epoch(e.ctx, &devshardtypes.QueryEpochRequest{Id: epoch}); err == nil {
		e.t.Logf("epoch %d: %s", epoch, ep.Epoch.State)
	}
	for _, h := range e.nw.Hosts {
		s, err := q.Summary(e.ctx, &devshardtypes.QuerySummaryRequest{EpochId: epoch, Address: h.Account.String()})
		if err != nil {
			e.t.Logf("%s: no summary: %v", h.Name, err)
			continue
		}
		e.t.Logf("%s: %+v", h.Name, s.Summary)
	}
}

// settleTx finds the tx that settled escrow id, by its event: the one that
// paid it at once, or else the last settlement accepted into its challenge
// window (the window's close pays that one in an end block, outside any tx).
func (e *e2e) settleTx(id uint64) string {
	e.t.Helper()
	svc := txtypes.NewServiceClient(e.nw.Chain.Conn())
	for _, event := range []string{"EventEscrowSettled", "EventSettlementPending"} {
		for _, q := range []string{
			fmt.Sprintf("devshard.devshard.v1.%s.escrow_id='\"%d\"'", event, id),
			fmt.Sprintf("devshard.devshard.v1.%s.escrow_id='%d'", event, id),
		} {
			res, err := svc.GetTxsEvent(e.ctx, &txtypes.GetTxsEventRequest{Query: q, Limit: 1, OrderBy: txtypes.OrderBy_ORDER_BY_DESC})
			if err == nil && len(res.TxResponses) == 1 {
				return res.TxResponses[0].TxHash
			}
		}
	}
	e.t.Fatalf("no tx settled escrow %d", id)
	return ""
}

// waitEpochStart returns once a new epoch has begun, so a step that needs
// one escrow throughout has a whole epoch before the gateway settles it.
func (e *e2e) waitEpochStart() {
	e.t.Helper()
	q := devshardtypes.NewQueryClient(e.nw.Chain.Conn())
	cur := func() uint64 {
		res, err := q.CurrentEpoch(e.ctx, &devshardtypes.QueryCurrentEpochRequest{})
		require.NoError(e.t, err)
		return res.Epoch.Id
	}
	start := cur()
	require.Eventually(e.t, func() bool { return cur() > start }, 60*time.Second, 200*time.Millisecond)
	// The gateway sees the new epoch on its next poll and settles the
	// old escrows; wait until it has retired them.
	require.Eventually(e.t, func() bool {
		for _, v := range e.nw.Gateway.Gateway.Escrows() {
			if v.Status == gateway.StatusOpen && v.Epoch < start+1 {
				return false
			}
		}
		return true
	}, 30*time.Second, 200*time.Millisecond)
}

func (e *e2e) hostAt(url string) *Host {
	for _, h := range e.nw.Hosts {
		if h.URL == url {
			return h
		}
	}
	e.t.Fatalf("no host serves %s", url)
	return nil
}

func (e *e2e) holds(h *Host, escrow uint64) bool {
	res, err := devshardtypes.NewQueryClient(e.nw.Chain.Conn()).Escrow(e.ctx, &devshardtypes.QueryEscrowRequest{Id: escrow})
	require.NoError(e.t, err)
	for _, a := range res.Escrow.Snapshot.Group {
		if sdk.AccAddress(a).Equals(h.Account) {
			return true
		}
	}
	return false
}

// hostRoot reads the root a host stored at nonce, as the escrow's creator;
// a parenthesized note if it has none.
func (e *e2e) hostRoot(h *Host, escrow, nonce uint64) string {
	e.t.Helper()
	key, err := signing.PrivKeyFromBytes(e.nw.GatewayAccount.Key.Key)
	require.NoError(e.t, err)
	req, err := http.NewRequestWithContext(e.ctx, http.MethodGet, fmt.Sprintf("%s/v1/sessions/%d/diffs?from=%d&limit=1", h.URL, escrow, nonce), nil)
	require.NoError(e.t, err)
	require.NoError(e.t, httpauth.Sign(req, nil, key, e.audience(h), time.Now()))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("(answered %d)", resp.StatusCode)
	}
	var out struct {
		Diffs []struct {
			Nonce uint64 `json:"nonce"`
			Root  string `json:"root"`
		} `json:"diffs"`
	}
	require.NoError(e.t, jsonDecode(resp, &out))
	if len(out.Diffs) != 1 {
		return "(no diff)"
	}
	return out.Diffs[0].Root
}

// audience names host h on the devnet's chain, for a signed request.
func (e *e2e) audience(h *Host) httpauth.Audience {
	e.t.Helper()
	a, err := signing.AddressFromBytes(h.Account)
	require.NoError(e.t, err)
	return httpauth.Audience{ChainID: e.nw.Chain.ChainID, Host: a}
}

func jsonDecode(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }

// metric sums a Prometheus counter's samples from a host's /metrics: the
// lines that start with name (a series: a name, or a name and labels). A
// metric not exported yet reads 0.
func metric(t *testing.T, url, name string) float64 {
	t.Helper()
	return sumSeries(t, scrape(t, url), name)
}

// scrape is the text of url's /metrics.
func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(raw)
}

// carriedTimeouts is how many timeout votes the gateway at url has carried
// into diffs, from every host.
func carriedTimeouts(t *testing.T, url string) float64 {
	t.Helper()
	var sum float64
	for _, line := range strings.Split(scrape(t, url), "\n") {
		if strings.HasPrefix(line, "devshard_gateway_host_txs_carried_total{") && strings.Contains(line, `kind="timeout"`) {
			sum += sumSeries(t, line, line[:strings.LastIndexByte(line, ' ')])
		}
	}
	return sum
}

// timeoutVotesToDecide is how many slots' timeout votes decide against an
// inference that h executes in escrow id: a strict majority of the slots
// that may vote (those h does not hold) and at least a third of the group
// (session/vote.go, docs/protocol.md "Votes and thresholds"). It reports
// false when the slots h does not hold are too few ever to decide.
func timeoutVotesToDecide(t *testing.T, e *e2e, id uint64, h *Host) (int, bool) {
	t.Helper()
	res, err := devshardtypes.NewQueryClient(e.nw.Chain.Conn()).Escrow(e.ctx, &devshardtypes.QueryEscrowRequest{Id: id})
	require.NoError(t, err)
	n, eligible := len(res.Escrow.Snapshot.Group), 0
	for _, a := range res.Escrow.Snapshot.Group {
		if !sdk.AccAddress(a).Equals(h.Account) {
			eligible++
		}
	}
	need := eligible/2 + 1
	for 3*need < n {
		need++
	}
	return need, need <= eligible
}

// anyTimeoutDecidable reports whether the group of escrow id can time out
// the work of any of its hosts.
func (e *e2e) anyTimeoutDecidable(id uint64) bool {
	for _, h := range e.nw.Hosts {
		if _, ok := timeoutVotesToDecide(e.t, e, id, h); ok && e.holds(h, id) {
			return true
		}
	}
	return false
}

// sumSeries sums the samples of the lines of a /metrics text that start
// with series.
func sumSeries(t *testing.T, text, series string) float64 {
	t.Helper()
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, series) {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		require.NoError(t, err, line)
		sum += v
	}
	return sum
}
