"""The programs edgekernel runs on the board for file transfers (MicroPython source, sent as text).

Kept apart from device/files.py, which drives them from the host: each runs in a throw-away
namespace (BoardSession.exec(..., scratch=True)), is written for the oldest firmware met
(MicroPython 1.9.2 on the micro:bit: 16 KB of RAM, no compile()) and speaks the framing
described in files.py: frames of escaped bytes, credit bytes ('#', 'S'), '!' to stop, and
'=' before its result.
"""
from __future__ import annotations

PROBE = """\
def _ekc():
 r={}
 for m,a,k in (('os','stat','stat'),('os','ilistdir','ilistdir'),('os','statvfs','statvfs'),('os','listdir','listdir'),('os','size','size'),('os','rename','rename'),('os','rmdir','rmdir'),('os','mkdir','mkdir'),('hashlib','sha256','sha256'),('binascii','a2b_base64','base64'),('binascii','b2a_base64','base64'),('deflate','DeflateIO','deflate'),('micropython','kbd_intr','kbd_intr'),('io','BytesIO','bytesio')):
  try:
   getattr(__import__(m),a);r[k]=r.get(k,1)
  except:
   r[k]=0
 import sys,gc
 for k in ('stdin','stdout'):
  try:
   getattr(sys,k).buffer;r[k]=1
  except:
   r[k]=0
 gc.collect();r['free_ram']=gc.mem_free()
 print(repr(r))
_ekc()
"""

HASH_SHA = "import hashlib\nH=hashlib.sha256\n"
HASH_ADLER = """\
class H:
 def __init__(s):
  s.a=1;s.b=0
 def update(s,d):
  a=s.a;b=s.b
  for x in d:
   a+=x;b+=a
  s.a=a%65521;s.b=b%65521
 def digest(s):
  return s.b*65536+s.a
"""

# Raw-bytes receiver. Wire: frames of [kind 'R'|'Z', length as 3 x (0x80 | 7 bits, LE), payload].
# No 0x03 ever travels in a frame, so a raw 0x03 (the session's Ctrl-C) stops the receiver.
# Credit: the host may send 2*W bytes after 'S' and W more per '#'.
# The data starts after a 0x02 the host sends first: whatever the board's stdin held before it (the
# spare end byte a paced upload may add when the board went silent) is skipped, not taken as data.
RECEIVER = """\
def _ekp(p,ap,n,W,B,wb):
 import sys,micropython,os
{hash}
 i=sys.stdin.buffer
 s0=0
 if ap:
  try:
   s0=os.stat(p)[6]
  except OSError:
   pass
 f=open(p,'ab' if ap else 'wb')
 b=bytearray(B);m=memoryview(b);C=[0,0]
 def rd(k):
  o=0
  while o<k:
   c=C[0];r=W-c%W
   if r>k-o:
    r=k-o
   i.readinto(m[o:o+r])
   if b.find(b'\\x03',o,o+r)>=0:
    raise KeyboardInterrupt
   o+=r;c+=r;C[0]=c
   if c%W==0:
    C[1]+=1;print('#',end='')
 micropython.kbd_intr(-1)
 try:
  try:
   print('S',end='')
   while 1:
    i.readinto(m[:1])
    if b[0]==2:
     break
    if b[0]==3:
     raise KeyboardInterrupt
   if wb:
    import deflate,io
    ob=bytearray(1024);om=memoryview(ob)
   while C[0]<n:
    rd(4);k=b[1]&127|(b[2]&127)<<7|(b[3]&127)<<14;t=b[0];rd(k)
    c=m[:k]
    if b.find(b'\\x1b',0,k)>=0:
     c=bytes(c).replace(b'\\x1bC',b'\\x03').replace(b'\\x1bE',b'\\x1b')
    if t==82:
     f.write(c)
    else:
     d=deflate.DeflateIO(io.BytesIO(c),deflate.RAW,wb)
     while 1:
      r=d.readinto(ob)
      if not r:
       break
      f.write(om[:r])
     d=None
   f.close()
  except BaseException as e:
   print('!',end='')
   while 1:
    i.readinto(m[:1])
    if b[0]==3:
     break
   try:
    f.close()
   except:
    pass
   if not ap:
    try:
     os.remove(p);print('removed',end='')
    except:
     pass
   raise e
 finally:
  micropython.kbd_intr(3)
 b=m=None
 h=H();f=open(p,'rb');f.seek(s0);t=0;b=bytearray(512)
 while 1:
  k=f.readinto(b)
  if not k:
   break
  h.update(b if k==512 else b[:k]);t+=k
 f.close()
 print('='+repr((s0,t,h.digest())))
_ekp({args})
"""

# Raw-bytes sender: ESC-escaped data, ESC Z, then '=' repr((length, digest)).
SENDER = """\
def _ekg(p,B):
 import sys
{hash}
 o=sys.stdout.buffer;h=H();f=open(p,'rb');b=bytearray(B);t=0
 print(':',end='')
 while 1:
  k=f.readinto(b)
  if not k:
   break
  c=bytes(b) if k==B else b[:k]
  h.update(c);t+=k
  o.write(c.replace(b'\\x1b',b'\\x1bE').replace(b'\\x1e',b'\\x1bR').replace(b'\\x04',b'\\x1bD'))
 f.close()
 o.write(b'\\x1bZ')
 print('='+repr((t,h.digest())))
_ekg({args})
"""

# Literal reader for boards without sys.stdout.buffer: one bytes literal per line.
LITERAL_READER = """\
def _ekg(p,K):
{hash}
 h=H();f=open(p,'rb');t=0
 while 1:
  c=f.read(K)
  if not c:
   break
  h.update(c);t+=len(c)
  print(repr(c))
 f.close()
 print('='+repr((t,h.digest())))
_ekg({args})
"""

VERIFY = """\
def _ekv(p,s0):
{hash}
 h=H();f=open(p,'rb');t=0
 if s0:
  f.read(s0)
 while 1:
  c=f.read(256)
  if not c:
   break
  h.update(c);t+=len(c)
 f.close()
 print('='+repr((s0,t,h.digest())))
_ekv({args})
"""
