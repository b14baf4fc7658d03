import os
for v in ("OMP_NUM_THREADS","OPENBLAS_NUM_THREADS"): os.environ[v]="1"
import numpy as np, time
from tinyddpm.ops.conv2d import conv2d_forward, conv2d_backward
from tinyddpm.ops.conv2d_winograd import conv3x3_winograd_forward as wf, conv3x3_winograd_backward as wb
rng=np.random.default_rng(0)
def run(f,b,x,w,bb,dy):
    t=time.perf_counter(); y,c=f(x,w,bb); t1=time.perf_counter(); b(dy,c); t2=time.perf_counter(); return t1-t,t2-t1
tot={'ref':0,'win':0}
for (C,H,F,cnt) in [(32,7,32,8),(16,28,16,4),(32,14,32,4),(64,7,32,2),(16,14,32,1),(64,14,32,1),(48,14,32,1),(32,28,32,1),(48,28,16,1),(32,28,16,1),(16,28,1,1),(1,28,16,1)]:
    N=16
    x=rng.standard_normal((N,C,H,H),dtype=np.float32); w=rng.standard_normal((F,C,3,3),dtype=np.float32)*0.1; bb=np.zeros(F,np.float32)
    dy=rng.standard_normal((N,F,H,H),dtype=np.float32)
    best={'ref':9,'win':9}
    for _ in range(9):
        for name,(f,b) in (('ref',(conv2d_forward,conv2d_backward)),('win',(wf,wb))):
            a,c=run(f,b,x,w,bb,dy); best[name]=min(best[name],a+c)
    for k in tot: tot[k]+=cnt*best[k]
    print((C,H,F,cnt), f"ref {best['ref']*1e3:.2f} win {best['win']*1e3:.2f} speedup {best['ref']/best['win']:.2f}")
print({k:round(v*1e3,1) for k,v in tot.items()})
